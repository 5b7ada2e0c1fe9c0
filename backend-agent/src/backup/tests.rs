#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn a_backup_goes_into_an_empty_directory_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x"), b"x").unwrap();
    let err = copy::prepare_out(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    copy::prepare_out(&dir.path().join("fresh")).unwrap();
}

#[test]
fn a_changed_file_fails_the_manifest_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STORE_FILE), b"db").unwrap();
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        created_at: "2026-01-01T00:00:00Z".into(),
        backend_version: "0".into(),
        schema_version: 1,
        checkpoint_seq: None,
        audit_name: "audit.log".into(),
        files: vec![copy::entry(dir.path(), &dir.path().join(STORE_FILE)).unwrap()],
    };
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    assert_eq!(read_manifest(dir.path()).unwrap().files[0].path, STORE_FILE);
    std::fs::write(dir.path().join(STORE_FILE), b"tampered").unwrap();
    let err = read_manifest(dir.path()).unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
}

#[test]
fn a_backup_from_a_newer_schema_is_refused_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().join("backup");
    std::fs::create_dir(&backup_dir).unwrap();
    std::fs::write(backup_dir.join(STORE_FILE), b"db").unwrap();
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        created_at: "2026-01-01T00:00:00Z".into(),
        backend_version: "9.9.9".into(),
        schema_version: crate::store::sqlite::SCHEMA_VERSION + 1,
        checkpoint_seq: None,
        audit_name: "audit.log".into(),
        files: vec![copy::entry(&backup_dir, &backup_dir.join(STORE_FILE)).unwrap()],
    };
    std::fs::write(
        backup_dir.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let config = dir.path().join("etc/backend.toml");
    let err = restore(&config, &backup_dir, true).unwrap_err().to_string();
    assert!(err.contains("newer than this build supports"), "{err}");
    assert!(err.contains("9.9.9"), "{err}");
    assert!(!config.exists(), "nothing written");
}
