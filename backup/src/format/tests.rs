//! The backup stream's round trip, and the reader's refusal of every truncation, flipped
//! byte, spliced frame and impossible record.

use super::*;
use proptest::prelude::*;

fn header(revision: u64, entries: &[Entry]) -> Header {
    Header {
        format: FORMAT_VERSION,
        cluster_id: "c0ffee".into(),
        revision,
        log_index: 42,
        created_unix_ms: 1_700_000_000_000,
        source_node: 7,
        keys: entries.len() as u64,
        data_bytes: entries
            .iter()
            .map(|e| (e.key.len() + e.value.len()) as u64)
            .sum(),
        config: serde_json::json!({"replication_mode": "quorum"}),
    }
}

fn entries(n: usize, value_len: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            key: format!("key/{i:08}"),
            create_revision: i as u64 + 1,
            mod_revision: i as u64 + 1,
            version: 1,
            value: vec![(i % 251) as u8; value_len],
        })
        .collect()
}

fn read_all(bytes: &[u8]) -> Result<(Header, Vec<Entry>), FormatError> {
    let mut r = Reader::open(bytes)?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        out.push(e);
    }
    Ok((r.header().clone(), out))
}

#[test]
fn round_trips_over_many_frames() {
    let es = entries(3000, 300);
    let h = header(5000, &es);
    let bytes = encode(h.clone(), &es).unwrap();
    // Several records frames, so frame boundaries are exercised.
    assert!(bytes.len() > 3 * FRAME_TARGET);
    let (h2, es2) = read_all(&bytes).unwrap();
    assert_eq!(h2, h);
    assert_eq!(es2, es);
}

#[test]
fn the_reader_gives_the_whole_stream_sha256_once_it_read_the_trailer() {
    let es = entries(1000, 300);
    let bytes = encode(header(1000, &es), &es).unwrap();
    let mut r = Reader::open(&bytes[..]).unwrap();
    r.next_entry().unwrap();
    assert_eq!(r.stream_sha256(), None, "before the trailer");
    r.verify_rest().unwrap();
    assert_eq!(
        r.stream_sha256(),
        Some(crate::frame::sha256_hex(&bytes).as_str())
    );
}

#[test]
fn an_empty_state_round_trips() {
    let h = header(0, &[]);
    let bytes = encode(h.clone(), &[]).unwrap();
    assert_eq!(read_all(&bytes).unwrap(), (h, vec![]));
}

#[test]
fn the_writer_refuses_counts_that_differ_from_its_header() {
    let es = entries(3, 4);
    let mut h = header(10, &es);
    h.keys = 4;
    assert!(
        encode(h, &es)
            .unwrap_err()
            .to_string()
            .contains("promised 4 keys")
    );
}

#[test]
fn every_truncation_is_refused() {
    let es = entries(40, 20_000);
    let bytes = encode(header(100, &es), &es).unwrap();
    for len in (0..bytes.len())
        .step_by(1009)
        .chain(bytes.len() - 20..bytes.len())
    {
        let err = read_all(&bytes[..len]).expect_err("a truncated backup was accepted");
        let msg = err.to_string();
        assert!(
            matches!(err, FormatError::Truncated { .. } | FormatError::NotABackup),
            "cut at {len}: {msg}"
        );
        if len >= 8 {
            assert!(msg.contains("truncated at byte"), "{msg}");
        }
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let es = entries(5, 3);
    let bytes = encode(header(9, &es), &es).unwrap();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        assert!(read_all(&bad).is_err(), "a flip at byte {i} went unnoticed");
    }
}

#[test]
fn a_frame_spliced_from_another_backup_is_refused() {
    // Two backups of the same shape, whose records frames differ only in values: each
    // frame is valid on its own, so only the digest can tell.
    let a = entries(4, 8);
    let mut b = a.clone();
    b[2].value = vec![9; 8];
    let h = header(10, &a);
    let (ba, bb) = (encode(h.clone(), &a).unwrap(), encode(h, &b).unwrap());
    assert_eq!(ba.len(), bb.len());
    // The header frame is identical; splice b's records frame into a.
    let first = ba.iter().zip(&bb).position(|(x, y)| x != y).unwrap();
    let trailer_len = {
        let t = Trailer {
            keys: 4,
            sha256: "0".repeat(64),
        };
        FRAME_HEAD + serde_json::to_vec(&t).unwrap().len()
    };
    let mut spliced = ba.clone();
    let end = ba.len() - trailer_len;
    spliced[..end].copy_from_slice(&bb[..end]);
    assert!(first < end);
    let msg = read_all(&spliced).unwrap_err().to_string();
    assert!(msg.contains("SHA-256") && msg.contains("spliced"), "{msg}");
}

#[test]
fn out_of_order_and_impossible_records_are_refused() {
    let mut es = entries(3, 1);
    es.swap(0, 1);
    let msg = read_all(&encode(header(10, &es), &es).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("does not come after"), "{msg}");

    let es = entries(3, 1);
    // Revisions past the header's: a backup claiming an older revision than its data.
    let msg = read_all(&encode(header(2, &es), &es).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("impossible revisions"), "{msg}");
}

#[test]
fn bytes_after_the_trailer_and_foreign_files_are_refused() {
    let es = entries(2, 2);
    let mut bytes = encode(header(5, &es), &es).unwrap();
    bytes.push(0);
    assert!(
        read_all(&bytes)
            .unwrap_err()
            .to_string()
            .contains("follow the trailer")
    );

    assert!(matches!(
        read_all(b"SQLite format 3\0....").unwrap_err(),
        FormatError::NotABackup
    ));
    let mut v2 = encode(header(5, &es), &es).unwrap();
    v2[8] = 2;
    assert!(matches!(
        read_all(&v2).unwrap_err(),
        FormatError::UnsupportedVersion { found: 2, .. }
    ));
}

proptest! {
    #[test]
    fn any_state_round_trips(
        map in proptest::collection::btree_map("[a-z/]{1,12}", proptest::collection::vec(any::<u8>(), 0..64), 0..40),
    ) {
        let es: Vec<Entry> = map
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| Entry {
                key,
                create_revision: i as u64 + 1,
                mod_revision: i as u64 + 3,
                version: 2,
                value,
            })
            .collect();
        let h = header(es.len() as u64 + 3, &es);
        let bytes = encode(h.clone(), &es).unwrap();
        prop_assert_eq!(read_all(&bytes).unwrap(), (h, es));
    }
}
