#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `docs/audit.md` stays true: its Python snippets accept logs written by this crate (and
//! reject tampered ones), and its hashing shortcut gives the same hashes.
//!
//! The Python parts are skipped, with a note, where `python3` (or the `cryptography` package for
//! the signature snippet) is not installed, except when `AGENTMESH_REQUIRE_EXTERNAL=1` (set by
//! `.ci/run`): then a missing tool fails the test instead of passing it silently.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use agentmesh_audit::{
    log_files, result_digest, sign_result_digest, spki_der_from_cert_der, verify_files, AuditEvent,
    AuditLog, AuditOptions, ResultSignature,
};
use agentmesh_protocol::ResultFrame;
use serde_json::json;
use sha2::Digest;

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/audit.md");
    fs::read_to_string(path).unwrap()
}

/// The `n`th fenced block of `lang` in the doc.
fn snippet(lang: &str, n: usize) -> String {
    let doc = doc();
    let fence = format!("```{lang}\n");
    let start = doc.match_indices(&fence).nth(n).expect("snippet").0 + fence.len();
    let len = doc[start..].find("```").unwrap();
    doc[start..start + len].to_owned()
}

/// Whether CI demands the external tools (then a skip is a failure).
fn require_external() -> bool {
    std::env::var("AGENTMESH_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1")
}

/// Skips with a note, or panics when CI demands the tool.
fn skip(why: &str) {
    assert!(
        !require_external(),
        "AGENTMESH_REQUIRE_EXTERNAL=1 but {why}"
    );
    eprintln!("skipping: {why}");
}

fn python(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("python3").args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            skip(&format!("python3 not runnable: {e}"));
            None
        }
    }
}

/// A rotated log with awkward strings, keys and numbers, and one signed result.
fn awkward_log(dir: &Path) -> (PathBuf, serde_json::Value) {
    let path = dir.join("audit.jsonl");
    let options = AuditOptions {
        max_file_bytes: 4096,
        ..common::fast()
    };
    let (log, _) = AuditLog::open(&path, options).unwrap();
    for i in 0..20u64 {
        log.append(AuditEvent::new("command_requested").details(json!({
            "text": "ctl \u{1} \u{1f} del \u{7f} quote \" slash / back \\ é 😀 \u{2028} \n\t\r\u{8}\u{c}",
            "z": 1, "Z": 2, "aa": 3, "é": 4, "\u{ffff}": 5, "\u{10000}": 6,
            "nested": {"b": [true, false, null, {"y": 1, "x": 2}], "a": u64::MAX, "c": i64::MIN},
            "i": i,
        })))
        .unwrap();
    }
    let ca = mesh_certs::Ca::generate("docs CA").unwrap();
    let issued = ca
        .issue_agent("web-01", mesh_certs::Validity::days(1))
        .unwrap();
    let key = mesh_certs::private_key_der_from_pem(&issued.key_pem).unwrap();
    let cert = mesh_certs::certs_der_from_pem(&issued.cert_pem)
        .unwrap()
        .remove(0);
    let spki = spki_der_from_cert_der(&cert).unwrap();
    let frame: ResultFrame =
        serde_json::from_value(json!({"command_id": "c-1", "status": "ok", "stdout": "pong"}))
            .unwrap();
    let digest = result_digest(&frame);
    let sig = sign_result_digest(&key, &digest).unwrap();
    let mut details = json!({"status": "ok"});
    ResultSignature::new(&spki, &digest, &sig).insert_into(&mut details);
    log.append(AuditEvent::new("command_result").details(details.clone()))
        .unwrap();
    drop(log);
    (path, details)
}

#[test]
fn python_verifier_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = awkward_log(dir.path());
    let files = log_files(&path).unwrap();
    assert!(files.len() > 1, "the log should have rotated");
    let summary = verify_files(&files).unwrap();
    assert_eq!(summary.signatures_checked, 1);

    let script = dir.path().join("verify.py");
    fs::write(&script, snippet("python", 0)).unwrap();
    let mut args = vec![script.to_str().unwrap().to_owned()];
    args.extend(files.iter().map(|f| f.to_str().unwrap().to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(out) = python(&args) else { return };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "ok: last seq {}, last hash {}",
            summary.last_seq, summary.last_hash
        )
    );

    // Tampering is caught by the snippet too.
    let first = &files[0];
    let text = fs::read_to_string(first)
        .unwrap()
        .replacen("\"i\":3", "\"i\":4", 1);
    fs::write(first, text).unwrap();
    let out = python(&args).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(":4 seq 4: hash mismatch"));
}

#[test]
fn hashing_shortcut_matches() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = awkward_log(dir.path());
    for file in log_files(&path).unwrap() {
        for line in fs::read_to_string(&file).unwrap().lines() {
            let key = "\"hash\":\"";
            let i = line.rfind(key).unwrap();
            let stored = &line[i + key.len()..i + key.len() + 64];
            let body = format!("{}{}", &line[..i], &line[i + key.len() + 64 + 2..]);
            let computed: String = sha2::Sha256::digest(body.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(computed, stored, "{line}");
        }
    }
}

#[test]
fn python_signature_check_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let (_, details) = awkward_log(dir.path());
    let Some(probe) = python(&["-c", "import cryptography"]) else {
        return;
    };
    if !probe.status.success() {
        skip("the python cryptography package is not installed");
        return;
    }
    let script = dir.path().join("sig.py");
    let program = format!(
        "{}\nimport json, sys\ncheck_signature(json.load(open(sys.argv[1])))\nprint('ok')\n",
        snippet("python", 1)
    );
    fs::write(&script, program).unwrap();
    let good = dir.path().join("good.json");
    fs::write(&good, details.to_string()).unwrap();
    let out = python(&[script.to_str().unwrap(), good.to_str().unwrap()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut tampered = details.clone();
    tampered["result_sha256"] = json!("0".repeat(64));
    let bad = dir.path().join("bad.json");
    fs::write(&bad, tampered.to_string()).unwrap();
    let out = python(&[script.to_str().unwrap(), bad.to_str().unwrap()]).unwrap();
    assert!(!out.status.success());
}
