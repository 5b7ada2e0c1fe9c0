//! The X.509, DER and key helpers other crates use instead of parsing themselves: SPKI and EC
//! point extraction, private keys in every PEM form rustls loads, and the CSR pre-check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use mesh_certs::{
    check_agent_csr, ec_p256_point_from_spki, generate_csr, p256_pkcs8_der_from_pem,
    pin_from_spki_der, private_key_from_pem, spki_der_from_cert_der, Ca, Validity,
};
use rustls_pki_types::PrivateKeyDer;

fn cert_der(pem: &str) -> Vec<u8> {
    mesh_certs::certs_der_from_pem(pem).unwrap().remove(0)
}

/// The key of `pkcs8_pem` in SEC1 form (`EC PRIVATE KEY`), as `openssl ec` writes it: with
/// the curve parameters and the public key. openssl is required (the CI image has it).
fn openssl_sec1(pkcs8_pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("key.pem");
    std::fs::write(&input, pkcs8_pem).unwrap();
    let out = Command::new("openssl")
        .args(["ec", "-in"])
        .arg(&input)
        .output()
        .expect("openssl must be installed to run this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn spki_and_ec_point_come_from_the_certificate() {
    let ca = Ca::generate("test CA").unwrap();
    let issued = ca.issue_agent("edge-01", Validity::days(1)).unwrap();
    let spki = spki_der_from_cert_der(&cert_der(&issued.cert_pem)).unwrap();
    assert_eq!(pin_from_spki_der(&spki), issued.pin);
    let point = ec_p256_point_from_spki(&spki).unwrap();
    assert_eq!(point.len(), 65);
    assert_eq!(point[0], 4, "uncompressed point");
    for garbage in [
        &b""[..],
        b"\x30",
        b"\x30\x85\x00",
        b"\x30\x05\x02\x01",
        b"\x04\x00",
    ] {
        assert!(spki_der_from_cert_der(garbage).is_err());
        assert!(ec_p256_point_from_spki(garbage).is_err());
    }
    // A certificate is not an SPKI.
    assert!(ec_p256_point_from_spki(&cert_der(&issued.cert_pem)).is_err());
}

#[test]
fn an_openssl_sec1_key_becomes_the_same_pkcs8_key() {
    let ca = Ca::generate("test CA").unwrap();
    let issued = ca.issue_agent("edge-01", Validity::days(1)).unwrap();
    let sec1 = openssl_sec1(&issued.key_pem);
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    assert!(matches!(
        private_key_from_pem(&sec1).unwrap(),
        PrivateKeyDer::Sec1(_)
    ));
    // The PKCS#8 CA-key reader still wants PKCS#8 and says how to convert.
    let err = mesh_certs::private_key_der_from_pem(&sec1).unwrap_err();
    assert!(err.to_string().contains("PKCS#8"), "{err}");

    let pkcs8 = p256_pkcs8_der_from_pem(&sec1).unwrap();
    let key = rcgen::KeyPair::try_from(pkcs8.as_slice()).unwrap();
    let original = rcgen::KeyPair::from_pem(&issued.key_pem).unwrap();
    assert_eq!(key.public_key_raw(), original.public_key_raw());
    // PKCS#8 passes through unchanged.
    assert_eq!(
        p256_pkcs8_der_from_pem(&issued.key_pem).unwrap(),
        original.serialize_der()
    );
}

#[test]
fn agent_csrs_are_checked_before_anything_is_signed() {
    let (csr, _key) = generate_csr("edge-01").unwrap();
    let pin = check_agent_csr(&csr).unwrap();
    let ca = Ca::generate("test CA").unwrap();
    let issued = ca
        .sign_agent_csr(&csr, "edge-01", Validity::days(1))
        .unwrap();
    assert_eq!(issued.pin, pin);

    // Keys an agent could not sign results with are refused up front.
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let err = check_agent_csr(&csr).unwrap_err().to_string();
        assert!(err.contains("P-256"), "{err}");
        assert!(ca
            .sign_agent_csr(&csr, "edge-01", Validity::days(1))
            .is_err());
    }
    // Not a CSR at all.
    assert!(check_agent_csr(&issued.cert_pem).is_err());
    assert!(check_agent_csr("junk").is_err());
}
