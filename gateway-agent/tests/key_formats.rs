//! Key formats: every key the TLS loader accepts can also sign results (PKCS#8 and SEC1 P-256),
//! and keys that could not sign (RSA, P-384) are refused by the loader and by `check-config`
//! instead of producing unsigned results later.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use gateway_agent::signing::{Sealed, Signer};
use gateway_agent::{check_config, tls};
use support::Pki;

/// Runs openssl (required: the CI image has it) and returns its stdout.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed to run this test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn to_sec1(key: &Path) {
    let sec1 = openssl(&["ec", "-in", key.to_str().unwrap()]);
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    std::fs::write(key, sec1).unwrap();
}

#[test]
fn a_sec1_key_loads_for_tls_and_signs_verifiable_results() {
    let pki = Pki::new("edge-01");
    std::fs::create_dir_all(pki.path().join("state")).unwrap();
    let key = pki.agent_dir.join("key.pem");
    to_sec1(&key);
    let mut config = pki.config(8081, &[&pki.server.pin], "");
    config.verbs[0].program = "/bin/sh".into();

    tls::load_key(&config.outbound.key).unwrap();
    tls::client_config(&config.outbound).unwrap();
    check_config(&config).unwrap();

    let signer = Signer::load(&config.outbound);
    let mut result = agentmesh_protocol::ResultFrame {
        command_id: "c-1".into(),
        status: agentmesh_protocol::CommandStatus::Ok,
        exit_code: Some(0),
        stdout: "hello\n".into(),
        stderr: String::new(),
        truncated: false,
        started_at: None,
        duration_ms: Some(1),
        error: None,
        signature: None,
    };
    let Sealed::Signed(sealed) = signer.ensure_signed(&mut result) else {
        panic!("a SEC1 key must sign")
    };
    // What the backend does with a delivered result: digest, certificate SPKI, verify.
    let cert = mesh_certs::certs_der_from_pem(&pki.agent_cert()).unwrap();
    let spki = mesh_certs::spki_der_from_cert_der(&cert[0]).unwrap();
    let digest = agentmesh_audit::result_digest(&result);
    let backend_view =
        agentmesh_audit::ResultSignature::new(&spki, &digest, result.signature.as_ref().unwrap());
    backend_view.verify().unwrap();
    assert_eq!(backend_view, sealed);
}

#[test]
fn keys_that_cannot_sign_are_refused_by_the_loader_and_check_config() {
    let pki = Pki::new("edge-01");
    std::fs::create_dir_all(pki.path().join("state")).unwrap();
    let key = pki.agent_dir.join("key.pem");
    let cases = [
        (
            "P-384 SEC1",
            openssl(&["ecparam", "-name", "secp384r1", "-genkey", "-noout"]),
        ),
        ("RSA PKCS#1", openssl(&["genrsa", "-traditional", "2048"])),
        (
            "RSA PKCS#8",
            openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ]),
        ),
    ];
    for (what, pem) in cases {
        std::fs::write(&key, &pem).unwrap();
        let err = tls::load_key(&key).unwrap_err().to_string();
        assert!(err.contains("P-256"), "{what}: {err}");
        let mut config = pki.config(8081, &[&pki.server.pin], "");
        config.verbs[0].program = "/bin/sh".into();
        let problems = check_config(&config).unwrap_err().join("\n");
        assert!(problems.contains("P-256"), "{what}: {problems}");
    }
}
