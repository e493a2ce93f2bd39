//! Names, times and manifests: round trips and the checks that make a backup good.

use proptest::prelude::*;

use super::*;
use crate::format::FORMAT_VERSION;

fn header() -> Header {
    Header {
        format: FORMAT_VERSION,
        cluster_id: "c-1".into(),
        revision: 42,
        log_index: 50,
        created_unix_ms: 1_764_988_496_789,
        source_node: 2,
        keys: 10,
        data_bytes: 1000,
        config: serde_json::json!({"replication": "sync"}),
    }
}

#[test]
fn utc_times_format_and_parse() {
    assert_eq!(format_utc(0), "19700101T000000Z");
    assert_eq!(format_utc(951_782_400), "20000229T000000Z");
    assert_eq!(format_utc(1_764_988_496), "20251206T023456Z");
    assert_eq!(parse_utc("20251206T023456Z"), Some(1_764_988_496));
    for bad in [
        "20250230T000000Z",
        "20251206T243456Z",
        "2025120T0234560Z",
        "20251206t023456Z",
        "1969",
    ] {
        assert_eq!(parse_utc(bad), None, "{bad}");
    }
}

#[test]
fn names_carry_cluster_time_and_revision() {
    let name = BackupName::new("c-1", 1_764_988_496_789, 42);
    assert_eq!(
        name.object(),
        "c-1/backup-20251206T023456Z-r00000000000000000042.rsb"
    );
    assert_eq!(
        name.manifest(),
        "c-1/backup-20251206T023456Z-r00000000000000000042.rsb.manifest.json"
    );
    assert_eq!(BackupName::parse(&name.object()), Some(name.clone()));
    assert_eq!(
        object_of_manifest(&name.manifest()),
        Some(name.object().as_str())
    );
    assert_eq!(BackupName::parse(&name.manifest()), None);
    for bad in [
        "backup-20251206T023456Z-r00000000000000000042.rsb",
        "a/b/backup-20251206T023456Z-r00000000000000000042.rsb",
        "c-1/backup-20251206T023456Z-r42.rsb",
        "c-1/backup-20251206T023456Z-r0000000000000000004x.rsb",
        "c-1/snap-20251206T023456Z-r00000000000000000042.rsb",
    ] {
        assert_eq!(BackupName::parse(bad), None, "{bad}");
    }
}

#[test]
fn manifest_round_trips_and_checks() {
    let object = BackupName::new("c-1", 1_764_988_496_789, 42).object();
    let m = Manifest::complete(&object, &header(), 1234, "ab12", 1000, 3500);
    assert_eq!(m.duration_ms, 2500);
    let json = m.to_json();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(text.contains("\"state\": \"complete\""), "{text}");
    assert_eq!(Manifest::from_json(&object, &json).unwrap(), m);
    assert!(m.check(1234, Some("AB12")).is_ok());
    assert!(m.check(1234, None).is_ok());
    assert!(matches!(
        m.check(1233, None),
        Err(ManifestError::Size {
            expected: 1234,
            found: 1233,
            ..
        })
    ));
    let err = m.check(1234, Some("ffff")).unwrap_err();
    assert!(matches!(err, ManifestError::Checksum { .. }));
    assert!(err.to_string().contains(&object), "{err}");
    // Moved beside another object, or of another version, or not a manifest at all.
    assert!(matches!(
        Manifest::from_json("c-1/other.rsb", &json),
        Err(ManifestError::WrongObject { .. })
    ));
    let newer = text.replace("\"manifest_version\": 1", "\"manifest_version\": 7");
    assert!(matches!(
        Manifest::from_json(&object, newer.as_bytes()),
        Err(ManifestError::Version { found: 7, .. })
    ));
    assert!(matches!(
        Manifest::from_json(&object, b"{\"x\":1}"),
        Err(ManifestError::Invalid { .. })
    ));
}

#[test]
fn failed_manifests_never_check() {
    let m = Manifest::failed("c-1/x.rsb", "the object store went away", None, 5, 4);
    assert_eq!(m.duration_ms, 0);
    let back = Manifest::from_json("c-1/x.rsb", &m.to_json()).unwrap();
    assert_eq!(
        back.status,
        Status::Failed {
            reason: "the object store went away".into()
        }
    );
    let err = back.check(0, Some("")).unwrap_err();
    assert!(
        err.to_string().contains("the object store went away"),
        "{err}"
    );
}

#[test]
fn sha256_matches_a_known_digest() {
    let mut h = Sha256::default();
    h.update(b"ab");
    h.update(b"c");
    assert_eq!(
        h.finish_hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

proptest! {
    #[test]
    fn any_time_and_revision_round_trips(secs in 0u64..253_402_300_800, rev: u64, cluster in "[a-z0-9-]{1,20}") {
        let name = BackupName { cluster_id: cluster, unix_secs: secs, revision: rev };
        prop_assert_eq!(parse_utc(&format_utc(secs)), Some(secs));
        prop_assert_eq!(BackupName::parse(&name.object()), Some(name));
    }

    #[test]
    fn names_sort_as_time_then_revision(a in 0u64..4_000_000_000, b in 0u64..4_000_000_000, ra: u64, rb: u64) {
        let (na, nb) = (BackupName::new("c", a * 1000, ra), BackupName::new("c", b * 1000, rb));
        prop_assert_eq!(na.object().cmp(&nb.object()), (a, ra).cmp(&(b, rb)));
    }
}
