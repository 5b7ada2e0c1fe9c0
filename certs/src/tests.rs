//! Round-trip tests across modules: generate, issue, parse back.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer as _;

use crate::*;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `^sha256//[A-Za-z0-9+/]{43}=$`, without pulling in a regex engine.
fn assert_pin_format(pin: &str) {
    let b64 = pin.strip_prefix("sha256//").expect(pin);
    let (body, pad) = b64.split_at(b64.len().min(43));
    assert_eq!(body.len(), 43, "{pin}");
    assert!(
        body.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'),
        "{pin}"
    );
    assert_eq!(pad, "=", "{pin}");
}

fn der(pem: &str) -> Vec<u8> {
    certs_der_from_pem(pem).unwrap().remove(0)
}

#[test]
fn ca_is_a_ten_year_p256_ca() {
    let ca = Ca::generate("test CA").unwrap();
    let info = inspect_pem(ca.cert_pem()).unwrap();
    assert!(info.is_ca);
    assert_eq!(info.subject, "CN=test CA");
    assert_eq!(info.issuer, "CN=test CA");
    assert_eq!(info.status, CertStatus::Valid);

    let cert_der = der(ca.cert_pem());
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert_eq!(
        cert.public_key()
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap(),
        x509_parser::oid_registry::OID_EC_P256
    );
    let lifetime = ca.not_after() - OffsetDateTime::now_utc();
    assert!(lifetime > Duration::days(3649) && lifetime <= Duration::days(3650));
    cert.verify_signature(None).unwrap();
}

#[test]
fn agent_certificate_round_trip() {
    let ca = Ca::generate("test CA").unwrap();
    let issued = ca.issue_agent("web-01", Validity::default()).unwrap();
    let cert_der = der(&issued.cert_pem);

    assert_eq!(common_name_from_cert_der(&cert_der).unwrap(), "web-01");
    let info = inspect_pem(&issued.cert_pem).unwrap();
    assert_eq!(info.ext_key_usage, ["clientAuth"]);
    assert!(!info.is_ca);
    assert!(info.sans.is_empty());
    assert_eq!(info.issuer, "CN=test CA");
    assert_eq!(info.pin, issued.pin);
    assert_eq!(issued.ca_pem, ca.cert_pem());
    assert_pin_format(&issued.pin);

    // Signed by the CA, and the key we got back is the certificate's key.
    let ca_der = der(ca.cert_pem());
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    let key = rcgen::KeyPair::try_from(private_key_der_from_pem(&issued.key_pem).unwrap()).unwrap();
    assert_eq!(pin_from_pem(&key.public_key_pem()).unwrap(), issued.pin);
}

#[test]
fn each_issuance_gets_a_new_key_and_serial() {
    let ca = Ca::generate("test CA").unwrap();
    let a = inspect_pem(&ca.issue_agent("a", Validity::default()).unwrap().cert_pem).unwrap();
    let b = inspect_pem(&ca.issue_agent("a", Validity::default()).unwrap().cert_pem).unwrap();
    assert_ne!(a.pin, b.pin);
    assert_ne!(a.serial, b.serial);
}

#[test]
fn server_certificate_has_dns_and_ip_sans() {
    let ca = Ca::generate("test CA").unwrap();
    let sans: Vec<String> = ["127.0.0.1", "::1", "localhost", "hub.example"]
        .map(String::from)
        .into();
    let issued = ca
        .issue_server("hub.example", &sans, Validity::default())
        .unwrap();
    let info = inspect_pem(&issued.cert_pem).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("hub.example"));
    assert_eq!(info.sans, ["hub.example", "127.0.0.1", "::1", "localhost"]);
    assert_eq!(info.ext_key_usage, ["serverAuth"]);

    // The IP really is an IP SAN, not a DNS name that looks like one.
    let cert_der = der(&issued.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
    let names = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(
        names.contains(&x509_parser::extensions::GeneralName::IPAddress(&[
            127, 0, 0, 1
        ]))
    );

    assert!(ca.issue_server("", &[], Validity::default()).is_err());
    assert!(ca
        .issue_server("hub", &["bad name é".into()], Validity::default())
        .is_err());
}

#[test]
fn files_are_written_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = init_ca_dir(&ca_dir, "files CA").unwrap();
    assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(
        fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap(),
        ca.cert_pem()
    );

    let out = dir.path().join("agents/web-01");
    let issued = issue_agent_to_dir(&ca_dir, "web-01", &out, Validity::default()).unwrap();
    assert_eq!(mode(&out.join(KEY_FILE)), 0o600);
    assert_eq!(
        fs::read_to_string(out.join(CERT_FILE)).unwrap(),
        issued.cert_pem
    );
    assert_eq!(
        fs::read_to_string(out.join(KEY_FILE)).unwrap(),
        issued.key_pem
    );
    assert_eq!(
        fs::read_to_string(out.join(CA_CERT_FILE)).unwrap(),
        ca.cert_pem()
    );

    let srv = dir.path().join("hub");
    let sans = ["10.0.0.1".to_owned()];
    issue_server_to_dir(&ca_dir, "hub", &sans, &srv, Validity::default()).unwrap();
    assert_eq!(mode(&srv.join(KEY_FILE)), 0o600);

    // An existing world-readable file is narrowed, not just overwritten.
    let loose = dir.path().join("loose.pem");
    fs::write(&loose, "old").unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    write_private(&loose, "secret").unwrap();
    assert_eq!(mode(&loose), 0o600);
    assert_eq!(fs::read_to_string(&loose).unwrap(), "secret");
}

#[test]
fn csr_signed_issuance_skips_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test CA").unwrap();
    let (csr, _key) = generate_csr("a").unwrap();
    let issued = ca.sign_agent_csr(&csr, "a", Validity::default()).unwrap();
    assert!(issued.key_pem.is_empty());
    issued.save(dir.path()).unwrap();
    assert!(dir.path().join(CERT_FILE).exists());
    assert!(!dir.path().join(KEY_FILE).exists());
}

#[test]
fn init_ca_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    init_ca_dir(dir.path(), "one").unwrap();
    let err = init_ca_dir(dir.path(), "two").unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
}

#[test]
fn load_round_trips_and_checks_the_pair() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test CA").unwrap();
    ca.save(dir.path()).unwrap();
    let loaded = Ca::load(dir.path()).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    let issued = loaded.issue_agent("x", Validity::default()).unwrap();
    assert_eq!(issued.ca_pem, ca.cert_pem());

    // A key from another CA is refused, naming the file.
    let other = tempfile::tempdir().unwrap();
    Ca::generate("other").unwrap().save(other.path()).unwrap();
    fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).unwrap();
    let err = Ca::load(dir.path()).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains(CA_CERT_FILE) && chain.contains("does not belong"),
        "{chain}"
    );

    // Missing files are named too.
    let err = Ca::load(&dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");

    // A leaf is not a CA.
    fs::write(dir.path().join(CA_CERT_FILE), &issued.cert_pem).unwrap();
    fs::write(dir.path().join(CA_KEY_FILE), &issued.key_pem).unwrap();
    assert!(Ca::load(dir.path()).is_err());
}

#[test]
fn pin_is_the_same_for_cert_public_key_and_csr() {
    let ca = Ca::generate("test CA").unwrap();
    let (csr, key_pem) = generate_csr("agent-7").unwrap();
    let issued = ca
        .sign_agent_csr(&csr, "agent-7", Validity::default())
        .unwrap();
    let public_pem = rcgen::KeyPair::from_pem(&key_pem).unwrap().public_key_pem();

    let from_cert = pin_from_pem(&issued.cert_pem).unwrap();
    assert_pin_format(&from_cert);
    assert_eq!(from_cert, issued.pin);
    assert_eq!(pin_from_pem(&public_pem).unwrap(), from_cert);
    assert_eq!(pin_from_pem(&csr).unwrap(), from_cert);
    let legacy = csr.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
    assert_eq!(pin_from_pem(&legacy).unwrap(), from_cert);
    assert_eq!(
        pin_from_cert_der(&der(&issued.cert_pem)).unwrap(),
        from_cert
    );
}

#[test]
fn csr_signing_forces_identity_and_usage() {
    let ca = Ca::generate("test CA").unwrap();
    let (csr, _) = generate_csr("asked-for").unwrap();
    let issued = ca
        .sign_agent_csr(&csr, "granted", Validity::default())
        .unwrap();
    let info = inspect_pem(&issued.cert_pem).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("granted"));
    assert_eq!(info.ext_key_usage, ["clientAuth"]);
    assert!(!info.is_ca);

    assert!(ca
        .sign_agent_csr(&csr, "bad id!", Validity::default())
        .is_err());
    assert!(ca
        .sign_agent_csr(ca.cert_pem(), "x", Validity::default())
        .is_err());
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let ca = Ca::generate("test CA").unwrap();
    let (csr, _) = generate_csr("a").unwrap();
    let mut csr_der = crate::pem::first_block(&csr).unwrap().der;
    // The signature BIT STRING is last; flip a bit in its final byte.
    let last = csr_der.len() - 1;
    csr_der[last] ^= 1;
    x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der).unwrap();
    let tampered = crate::pem::encode(crate::pem::CERTIFICATE_REQUEST, &csr_der);
    let err = ca
        .sign_agent_csr(&tampered, "a", Validity::default())
        .unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");
}

#[test]
fn certificate_from_the_past_is_reported_expired() {
    let ca = Ca::generate("test CA").unwrap();
    let now = OffsetDateTime::now_utc();
    let past = Validity {
        not_before: now - Duration::days(10),
        not_after: now - Duration::days(1),
    };
    let issued = ca.issue_agent("old", past).unwrap();
    let info = inspect_pem(&issued.cert_pem).unwrap();
    assert_eq!(info.status, CertStatus::Expired);
    assert!(OffsetDateTime::parse(&info.not_after, &Rfc3339).unwrap() < now);
    assert!(info.to_string().contains("status: expired"));
}

#[test]
fn validity_is_checked() {
    let ca = Ca::generate("test CA").unwrap();
    assert!(ca.issue_agent("a", Validity::days(-1)).is_err());
    let too_long = ca.issue_agent("a", Validity::days(CA_VALIDITY_DAYS + 1));
    assert!(too_long.unwrap_err().to_string().contains("after its CA"));
    let v = Validity::default();
    assert_eq!(
        v.not_after - v.not_before,
        Duration::days(365) + Duration::minutes(5)
    );
}

#[test]
fn debug_never_prints_keys() {
    let ca = Ca::generate("test CA").unwrap();
    let issued = ca.issue_agent("a", Validity::default()).unwrap();
    for text in [format!("{ca:?}"), format!("{issued:?}")] {
        assert!(!text.contains("PRIVATE"), "{text}");
        assert!(text.contains("***"), "{text}");
    }
}

#[test]
fn display_lists_one_field_per_line() {
    let ca = Ca::generate("test CA").unwrap();
    let issued = ca
        .issue_server("hub", &["127.0.0.1".into()], Validity::default())
        .unwrap();
    let text = inspect_pem(&issued.cert_pem).unwrap().to_string();
    assert!(text.lines().all(|l| l.contains(": ")), "{text}");
    assert!(text.contains("sans: hub, 127.0.0.1\n"), "{text}");
    assert!(text.ends_with(&format!("pin: {}", issued.pin)), "{text}");
}
