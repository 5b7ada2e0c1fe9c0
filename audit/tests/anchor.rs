//! Anchored verification: a log cut below or rewritten past a signed checkpoint fails and
//! names it; an intact log passes; a checkpoint by another key is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use agentmesh_audit::{
    find_record, kinds, verify_anchored, AnchorError, AuditEvent, AuditLog, CheckpointSigner,
};
use common::{event, fast, lines, write_log};

fn new_signer() -> (CheckpointSigner, String) {
    let issued = mesh_certs::Ca::generate("t")
        .and_then(|ca| ca.issue_server("hub", &["localhost".into()], mesh_certs::Validity::days(1)))
        .unwrap();
    let der = mesh_certs::private_key_der_from_pem(&issued.key_pem).unwrap();
    let signer = CheckpointSigner::from_pkcs8_der(&der).unwrap();
    let pin = signer.key_pin();
    (signer, pin)
}

#[test]
fn a_log_cut_below_its_checkpoint_fails_naming_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 10);
    let (signer, pin) = new_signer();
    let hash = find_record(&path, 10).unwrap().expect("record 10");
    let cp = signer
        .sign(10, &hash, "2026-01-01T00:00:00.000Z", "audit.jsonl")
        .unwrap();
    let summary = verify_anchored(&path, &cp, Some(&pin)).expect("intact log passes");
    assert_eq!(summary.last_seq, 10);

    let all = lines(&path);
    fs::write(&path, all[..7].join("\n") + "\n").unwrap();
    let err = verify_anchored(&path, &cp, Some(&pin)).unwrap_err();
    assert!(matches!(err, AnchorError::Cut { last_seq: 7, .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("seq 10") && text.contains(&hash), "{text}");

    // Cut and continued by a restart that did not know better: a different record at seq 10.
    let (log, _) = AuditLog::open(&path, fast()).unwrap();
    for i in 0..5 {
        log.append(event(100 + i)).unwrap();
    }
    drop(log);
    let err = verify_anchored(&path, &cp, Some(&pin)).unwrap_err();
    assert!(matches!(err, AnchorError::Rewritten { .. }), "{err}");
}

#[test]
fn a_checkpoint_by_another_key_or_with_a_bad_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    let (signer, pin) = new_signer();
    let (other, _) = new_signer();
    let hash = find_record(&path, 3).unwrap().unwrap();
    let cp = other.sign(3, &hash, "t", "f").unwrap();
    let err = verify_anchored(&path, &cp, Some(&pin)).unwrap_err();
    assert!(matches!(err, AnchorError::BadCheckpoint { .. }), "{err}");
    let mut cp = signer.sign(3, &hash, "t", "f").unwrap();
    cp.seq = 2;
    let err = verify_anchored(&path, &cp, Some(&pin)).unwrap_err();
    assert!(matches!(err, AnchorError::BadCheckpoint { .. }), "{err}");
}

#[test]
fn a_recorded_tail_loss_keeps_failing() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    let (log, _) = AuditLog::open(&path, fast()).unwrap();
    log.append(AuditEvent::new(kinds::AUDIT_TAIL_MISSING))
        .unwrap();
    log.append(event(4)).unwrap();
    drop(log);
    let (signer, pin) = new_signer();
    let hash = find_record(&path, 5).unwrap().unwrap();
    let cp = signer.sign(5, &hash, "t", "f").unwrap();
    let err = verify_anchored(&path, &cp, Some(&pin)).unwrap_err();
    assert!(matches!(err, AnchorError::TailLost { seq: 4, .. }), "{err}");
}
