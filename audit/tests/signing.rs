#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Result signatures made with mesh-certs keys, and their check in `verify_files`.

mod common;

use agentmesh_audit::{
    result_digest, salted_hash, sign_result_digest, spki_der_from_cert_der, verify_files,
    verify_result_signature, AuditEvent, AuditLog, BreakReason, ResultSignature, ResultSigner,
};
use agentmesh_protocol::{CommandStatus, ResultFrame};
use common::fast;
use mesh_certs::{Ca, Validity};
use serde_json::json;

struct Agent {
    key_der: Vec<u8>,
    spki_der: Vec<u8>,
    pin: String,
}

fn new_agent() -> Agent {
    let ca = Ca::generate("test CA").unwrap();
    let issued = ca.issue_agent("web-01", Validity::days(1)).unwrap();
    let key_der = mesh_certs::private_key_der_from_pem(&issued.key_pem).unwrap();
    let cert_der = mesh_certs::certs_der_from_pem(&issued.cert_pem)
        .unwrap()
        .remove(0);
    let spki_der = spki_der_from_cert_der(&cert_der).unwrap();
    Agent {
        key_der,
        spki_der,
        pin: issued.pin,
    }
}

fn result() -> ResultFrame {
    serde_json::from_value(json!({
        "command_id": "c-1",
        "status": "ok",
        "exit_code": 0,
        "stdout": "pong\n",
    }))
    .unwrap()
}

#[test]
fn spki_from_cert_has_the_cert_pin() {
    let agent = new_agent();
    assert_eq!(mesh_certs::pin_from_spki_der(&agent.spki_der), agent.pin);
}

#[test]
fn a_signature_verifies_and_a_tampered_digest_does_not() {
    let agent = new_agent();
    let digest = result_digest(&result());
    assert_eq!(digest.len(), 64);
    let sig = sign_result_digest(&agent.key_der, &digest).unwrap();
    assert!(verify_result_signature(&agent.spki_der, &digest, &sig));

    let mut other = result();
    other.stdout = "pwned\n".into();
    let tampered = result_digest(&other);
    assert_ne!(tampered, digest);
    assert!(!verify_result_signature(&agent.spki_der, &tampered, &sig));
    assert!(!verify_result_signature(&agent.spki_der, &digest, "AAAA"));
    assert!(!verify_result_signature(
        &agent.spki_der,
        &digest,
        "not base64!"
    ));
    assert!(!verify_result_signature(b"junk", &digest, &sig));
    assert!(!verify_result_signature(
        &new_agent().spki_der,
        &digest,
        &sig
    ));

    let signer = ResultSigner::from_pkcs8_der(&agent.key_der).unwrap();
    assert!(verify_result_signature(
        &agent.spki_der,
        &digest,
        &signer.sign_digest(&digest).unwrap()
    ));
    assert!(sign_result_digest(b"not a key", &digest).is_err());
}

#[test]
fn digest_ignores_a_signature_field_and_is_canonical() {
    let frame = result();
    let mut value = serde_json::to_value(&frame).unwrap();
    value["signature"] = json!("whatever");
    // The canonical form of the frame without `signature`, hashed: what a non-Rust agent does.
    value.as_object_mut().unwrap().remove("signature");
    let expected = {
        use sha2::Digest;
        let canonical = agentmesh_audit::canonical_json(&value);
        sha2::Sha256::digest(canonical.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(result_digest(&frame), expected);
    assert_eq!(frame.status, CommandStatus::Ok);
    // The frame's own `signature` field is not part of what it signs.
    let signed = ResultFrame {
        signature: Some("c2ln".into()),
        ..frame.clone()
    };
    assert_eq!(result_digest(&signed), result_digest(&frame));
}

#[test]
fn verify_files_checks_signed_records() {
    let agent = new_agent();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, fast()).unwrap();

    let digest = result_digest(&result());
    let sig = sign_result_digest(&agent.key_der, &digest).unwrap();
    let signed = ResultSignature::new(&agent.spki_der, &digest, &sig);
    signed.verify().unwrap();
    assert_eq!(signed.agent_pin, agent.pin);
    let mut details = json!({"status": "ok", "exit_code": 0});
    signed.insert_into(&mut details);
    log.append(
        AuditEvent::new("command_result")
            .agent("web-01")
            .command("c-1")
            .details(details.clone()),
    )
    .unwrap();
    assert_eq!(
        ResultSignature::from_details(&details).unwrap().unwrap(),
        signed
    );

    // A result whose recorded signature is for another digest: the chain is intact, the
    // signature is not.
    let mut forged = signed.clone();
    forged.result_sha256 = result_digest(&ResultFrame {
        stdout: "other".into(),
        ..result()
    });
    let mut bad = json!({});
    forged.insert_into(&mut bad);
    log.append(AuditEvent::new("command_result").details(bad))
        .unwrap();
    drop(log);

    let err = verify_files(std::slice::from_ref(&path)).unwrap_err();
    assert_eq!((err.line, err.seq), (2, Some(2)));
    assert!(matches!(err.reason, BreakReason::BadSignature(_)), "{err}");

    // Only the good record: one signature checked.
    let first = std::fs::read_to_string(&path).unwrap();
    let first = first.lines().next().unwrap();
    std::fs::write(&path, format!("{first}\n")).unwrap();
    let summary = verify_files(&[path]).unwrap();
    assert_eq!(summary.signatures_checked, 1);
}

#[test]
fn a_wrong_pin_is_a_bad_signature() {
    let agent = new_agent();
    let digest = result_digest(&result());
    let sig = sign_result_digest(&agent.key_der, &digest).unwrap();
    let mut signed = ResultSignature::new(&agent.spki_der, &digest, &sig);
    signed.agent_pin = mesh_certs::pin_from_spki_der(b"someone else");
    assert!(signed.verify().unwrap_err().contains("agent_pin"));
    let incomplete = json!({"signature": sig});
    assert!(ResultSignature::from_details(&incomplete).unwrap().is_err());
    assert!(ResultSignature::from_details(&json!({"x": 1})).is_none());
}

#[test]
fn salted_hashes() {
    let h = salted_hash(b"salt", "hunter2");
    assert!(h.starts_with("sha256:") && h.len() == 7 + 64);
    assert_eq!(h, salted_hash(b"salt", "hunter2"));
    assert_ne!(h, salted_hash(b"pepper", "hunter2"));
    // sha256("salthunter2")
    use sha2::Digest;
    let expected: String = sha2::Sha256::digest(b"salthunter2")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(h, format!("sha256:{expected}"));
}

#[test]
fn salted_secrets_carry_their_salt_and_stay_checkable() {
    let a = agentmesh_audit::salted_secret(&[1; 16], "hunter2");
    let b = agentmesh_audit::salted_secret(&[2; 16], "hunter2");
    assert_ne!(a, b, "equal secrets look different");
    assert!(
        a.starts_with(&format!("sha256:{}:", "01".repeat(16))),
        "{a}"
    );
    assert!(!a.contains("hunter2"));
    assert!(agentmesh_audit::secret_matches(&a, "hunter2"));
    assert!(agentmesh_audit::secret_matches(&b, "hunter2"));
    assert!(!agentmesh_audit::secret_matches(&a, "hunter3"));
    for bad in [
        "",
        "sha256:",
        "sha256:zz:00",
        "sha256:0:00",
        "md5:01:00",
        "sha256:01",
    ] {
        assert!(!agentmesh_audit::secret_matches(bad, "hunter2"), "{bad}");
    }
}
