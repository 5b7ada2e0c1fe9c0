//! Our pin must equal what OpenSSL computes over the certificate's public key, which is also
//! what `curl --pinnedpubkey` compares against.
//!
//! The fixed vector below needs no tool and always runs. The live comparison needs `openssl`;
//! it skips without it, except when `AGENTMESH_REQUIRE_EXTERNAL=1` (set by `.ci/run`), where a
//! missing tool is a failure rather than a silent pass.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use mesh_certs::{Ca, Validity};

/// A certificate made once by `openssl req -x509 -newkey ec` (P-256), independent of our code.
const VECTOR_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUflUdre+vG/rDmacOES/bcSYJeJgwCgYIKoZIzj0EAwIw
HzEdMBsGA1UEAwwUYWdlbnRtZXNoIHBpbiB2ZWN0b3IwIBcNMjYxMTI5MTcwNjQ4
WhgPMjEyNjExMDUxNzA2NDhaMB8xHTAbBgNVBAMMFGFnZW50bWVzaCBwaW4gdmVj
dG9yMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEp0Jx1kEmCQtrkmZF4ri2s+I
dDz8qVR5/tYT0NYFejmGzhBFjAZiPmtgZ0fJZr86wDtbJNxJWM5i4fMJMe7PJKNT
MFEwHQYDVR0OBBYEFI2Ju0BJ+yj82Q3UXe9X9Cjw0XBWMB8GA1UdIwQYMBaAFI2J
u0BJ+yj82Q3UXe9X9Cjw0XBWMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID
SAAwRQIgP6uk4aigyUWvIpjiocQOPR75SJ49buOpTqVQdFJ7zqcCIQC6xJwNB1TE
62OgEEHyCTd80YxnhXYKeoyDyxRr5aOKKg==
-----END CERTIFICATE-----
";

/// Computed once with the pipeline in `pin_matches_openssl`:
/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256
/// -binary | base64`.
const VECTOR_PIN: &str = "sha256//nDjG711CkYa/yjQ4Lacqs7KwhXElSWmBxr/TAJGX6b0=";

fn require_external() -> bool {
    std::env::var("AGENTMESH_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1")
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn pin_of_a_fixed_openssl_certificate_is_the_known_spki_hash() {
    assert_eq!(mesh_certs::pin_from_pem(VECTOR_PEM).unwrap(), VECTOR_PIN);
}

#[test]
fn pin_matches_openssl() {
    if !openssl_available() {
        assert!(
            !require_external(),
            "AGENTMESH_REQUIRE_EXTERNAL=1 but openssl is not on PATH"
        );
        println!("skipped: openssl is not on PATH");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::generate("openssl CA").unwrap();
    let issued = ca
        .issue_server("hub", &["127.0.0.1".to_owned()], Validity::default())
        .unwrap();
    issued.save(tmp.path()).unwrap();
    std::fs::write(tmp.path().join("vector.pem"), VECTOR_PEM).unwrap();

    let pin_of = |file: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -in {file} -pubkey -noout \
                 | openssl pkey -pubin -outform der \
                 | openssl dgst -sha256 -binary \
                 | base64"
            ))
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("sha256//{}", String::from_utf8(out.stdout).unwrap().trim())
    };
    assert_eq!(pin_of("cert.pem"), issued.pin);
    // The vector's recorded pin still matches what this openssl computes.
    assert_eq!(pin_of("vector.pem"), VECTOR_PIN);
}
