//! Our pin must equal what OpenSSL computes over the certificate's public key, which is also
//! what `curl --pinnedpubkey` compares against.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use mesh_certs::{Ca, Validity};

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn pin_matches_openssl() {
    if !openssl_available() {
        println!("skipped: openssl is not on PATH");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::generate("openssl CA").unwrap();
    let issued = ca
        .issue_server("hub", &["127.0.0.1".to_owned()], Validity::default())
        .unwrap();
    issued.save(tmp.path()).unwrap();

    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in cert.pem -pubkey -noout \
             | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary \
             | base64",
        )
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8(out.stdout).unwrap();
    assert_eq!(format!("sha256//{}", digest.trim()), issued.pin);
}
