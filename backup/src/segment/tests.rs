//! Segments round-trip; truncations, flipped bytes, spliced segments and misplaced
//! revisions are refused with the offset and what is wrong.

use super::*;

fn put(key: &str, value: &[u8], create: u64, version: u64) -> Change {
    Change {
        kind: ChangeKind::Put,
        key: key.into(),
        value: value.to_vec(),
        create_revision: create,
        version,
    }
}

fn revisions(from: u64, n: u64, value_len: usize) -> Vec<Revision> {
    (from..from + n)
        .map(|r| Revision {
            revision: r,
            received_unix_ms: 1_700_000_000_000 + r,
            changes: vec![
                put(&format!("k/{r}"), &vec![(r % 251) as u8; value_len], r, 1),
                put(&format!("t/{r}"), b"x", r, 1),
            ],
        })
        .collect()
}

fn encode(from: u64, revs: &[Revision], last: u64) -> (SegmentHeader, Vec<u8>) {
    let mut w = SegmentWriter::new("c0ffee", from);
    for r in revs {
        w.push(r).unwrap();
    }
    w.finish(last, 1_800_000_000_000).unwrap()
}

fn read(bytes: &[u8]) -> Result<(SegmentHeader, Vec<Revision>), FormatError> {
    SegmentReader::open(bytes)?.read_all()
}

#[test]
fn round_trips_over_many_frames() {
    let revs = revisions(10, 2000, 400);
    let (h, bytes) = encode(10, &revs, 2009);
    assert!(bytes.len() > 3 * FRAME_TARGET);
    let (h2, revs2) = read(&bytes).unwrap();
    assert_eq!(h2, h);
    assert_eq!(revs2, revs);
    assert_eq!((h.revisions, h.changes), (2000, 4000));
    assert_eq!(
        (h.first_received_unix_ms, h.last_received_unix_ms),
        (1_700_000_000_010, 1_700_000_002_009)
    );
}

#[test]
fn every_truncation_and_flipped_byte_is_refused() {
    let revs = revisions(5, 40, 30);
    let (_, bytes) = encode(5, &revs, 44);
    for cut in 0..bytes.len() {
        assert!(read(&bytes[..cut]).is_err(), "cut at {cut} was read");
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x04;
        assert!(read(&b).is_err(), "flip at {i} was read");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let e = read(&longer).unwrap_err().to_string();
    assert!(e.contains("bytes follow the trailer"), "{e}");
}

#[test]
fn frames_spliced_from_another_segment_fail_the_digest() {
    // Same shape, other values: every frame is valid on its own.
    let a = revisions(1, 10, 8);
    let mut b = a.clone();
    b[3].changes[0].value = b"other!!!".to_vec();
    let (_, ba) = encode(1, &a, 10);
    let (_, bb) = encode(1, &b, 10);
    assert_eq!(ba.len(), bb.len());
    // The header and the revisions of `b`, the trailer of `a`.
    let tail = ba.len() - {
        let t = serde_json::to_vec(&SegmentTrailer {
            revisions: 10,
            changes: 20,
            sha256: "0".repeat(64),
        })
        .unwrap();
        t.len() + crate::frame::FRAME_HEAD
    };
    let mut spliced = bb[..tail].to_vec();
    spliced.extend_from_slice(&ba[tail..]);
    let e = read(&spliced).unwrap_err().to_string();
    assert!(e.contains("altered or spliced"), "{e}");
}

#[test]
fn the_writer_never_splits_or_reorders_revisions() {
    let mut w = SegmentWriter::new("c", 10);
    assert!(w.push(&revisions(9, 1, 1)[0]).is_err(), "before first");
    w.push(&revisions(10, 1, 1)[0]).unwrap();
    assert!(w.push(&revisions(10, 1, 1)[0]).is_err(), "a revision twice");
    let empty = Revision {
        revision: 11,
        received_unix_ms: 0,
        changes: vec![],
    };
    assert!(w.push(&empty).is_err());
    assert!(w.finish(9, 0).is_err(), "ends before its first");
}

#[test]
fn a_backup_is_not_a_segment() {
    let backup = crate::format::encode(
        crate::format::Header {
            format: crate::format::FORMAT_VERSION,
            cluster_id: "c".into(),
            revision: 0,
            log_index: 0,
            created_unix_ms: 0,
            source_node: 1,
            keys: 0,
            data_bytes: 0,
            config: serde_json::Value::Null,
        },
        &[],
    )
    .unwrap();
    assert!(matches!(read(&backup), Err(FormatError::NotASegment)));
}
