#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The chain verifies, and every kind of tampering is reported at the right line.

mod common;

use std::fs;
use std::path::PathBuf;

use agentmesh_audit::{run_verify_cli, verify_files, BreakReason, GENESIS_PREV};
use common::{lines, write_lines, write_log};

#[test]
fn fresh_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 5);
    let summary = verify_files(std::slice::from_ref(&path)).unwrap();
    assert_eq!(summary.records, 5);
    assert_eq!((summary.first_seq, summary.last_seq), (1, 5));
    assert_eq!(summary.files, 1);
    let lines = lines(&path);
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["prev"], GENESIS_PREV);
    let last: serde_json::Value = serde_json::from_str(&lines[4]).unwrap();
    assert_eq!(last["hash"], summary.last_hash.as_str());
    assert_eq!(run_verify_cli(&[path]), 0);
}

#[test]
fn every_flipped_byte_is_detected_on_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 4);
    let original = fs::read(&path).unwrap();
    let tampered = dir.path().join("tampered.jsonl");
    for pos in 0..original.len() {
        let line = 1 + original[..pos].iter().filter(|&&b| b == b'\n').count() as u64;
        for mask in [0x01u8, 0x80] {
            let mut bytes = original.clone();
            bytes[pos] ^= mask;
            fs::write(&tampered, &bytes).unwrap();
            let err = verify_files(std::slice::from_ref(&tampered))
                .expect_err(&format!("flip {mask:#x} at byte {pos} went unnoticed"));
            assert_eq!(err.line, line, "flip {mask:#x} at byte {pos}: {err}");
            assert_eq!(err.file, tampered);
        }
    }
}

#[test]
fn a_deleted_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 5);
    let mut lines = lines(&path);
    lines.remove(2);
    write_lines(&path, &lines);
    let err = verify_files(&[path]).unwrap_err();
    assert_eq!((err.line, err.seq), (3, Some(4)));
    assert_eq!(
        err.reason,
        BreakReason::SeqOutOfOrder {
            expected: 3,
            found: 4
        }
    );
}

#[test]
fn two_reordered_records_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 5);
    let mut lines = lines(&path);
    lines.swap(1, 2);
    write_lines(&path, &lines);
    let err = verify_files(&[path]).unwrap_err();
    assert_eq!((err.line, err.seq), (2, Some(3)));
    assert!(matches!(err.reason, BreakReason::SeqOutOfOrder { .. }));
}

#[test]
fn a_renumbered_deletion_is_a_prev_mismatch() {
    // Deleting record 3 and renumbering (recomputing hashes but not the links) still fails.
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    let lines = lines(&path);
    let mut third: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    third["seq"] = 2.into();
    let map = third.as_object_mut().unwrap();
    map.remove("hash");
    let hash = sha256_hex(agentmesh_audit::canonical_json(&third).as_bytes());
    third["hash"] = hash.into();
    write_lines(
        &path,
        &[lines[0].clone(), agentmesh_audit::canonical_json(&third)],
    );
    let err = verify_files(&[path]).unwrap_err();
    assert_eq!(err.line, 2);
    assert!(
        matches!(err.reason, BreakReason::PrevMismatch { .. }),
        "{err}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn truncating_the_middle_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 6);
    let bytes = fs::read(&path).unwrap();
    let newlines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i)
        .collect();
    // Cut from the middle of line 3 to the middle of line 5.
    let from = newlines[1] + 40;
    let to = newlines[3] + 40;
    let mut cut = bytes[..from].to_vec();
    cut.extend_from_slice(&bytes[to..]);
    fs::write(&path, &cut).unwrap();
    // Records look alike, so the spliced line may even parse; either way line 3 is broken.
    let err = verify_files(&[path]).unwrap_err();
    assert_eq!(err.line, 3, "{err}");
}

#[test]
fn cli_reports_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    assert_eq!(run_verify_cli(&[]), 64);
    assert_eq!(run_verify_cli(std::slice::from_ref(&path)), 0);
    assert_eq!(run_verify_cli(&[dir.path().join("missing")]), 1);
    let mut lines = lines(&path);
    lines[1] = lines[1].replace("alice", "eve");
    write_lines(&path, &lines);
    let err = verify_files(std::slice::from_ref(&path)).unwrap_err();
    assert_eq!(
        err.to_string()
            .split(": hash mismatch")
            .next()
            .unwrap_or_default(),
        format!("{}:2 seq 2", path.display())
    );
    assert_eq!(run_verify_cli(&[path]), 1);
}

#[test]
fn files_must_link() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let one = write_log(a.path(), 2);
    let two = write_log(b.path(), 2);
    let err = verify_files(&[one, two.clone()]).unwrap_err();
    assert_eq!((err.file, err.line), (two, 1));
    let empty: Vec<PathBuf> = Vec::new();
    assert_eq!(verify_files(&empty).unwrap().records, 0);
}
