//! The pinning verifier: hub pins, front doors, chain first.
use super::*;
use mesh_certs::{Ca, Validity};

struct Fixture {
    verifier: PinningVerifier,
    observer: PinObserver,
    server_der: CertificateDer<'static>,
    server_pin: String,
}

fn fixture(pins: impl FnOnce(&str) -> Vec<String>) -> Fixture {
    let ca = Ca::generate("test mesh CA").unwrap();
    let server = ca.issue_server("hub.test", &[], Validity::days(1)).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let observer = PinObserver::default();
    let verifier = PinningVerifier::new(
        roots,
        pins(&server.pin),
        Arc::new(rustls::crypto::ring::default_provider()),
        observer.clone(),
    )
    .unwrap();
    Fixture {
        verifier,
        observer,
        server_der: CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap(),
        server_pin: server.pin,
    }
}

fn verify(f: &Fixture, name: &str) -> Result<ServerCertVerified, Error> {
    f.verifier.verify_server_cert(
        &f.server_der,
        &[],
        &ServerName::try_from(name.to_owned()).unwrap(),
        &[],
        UnixTime::now(),
    )
}

const OTHER_PIN: &str = "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

#[test]
fn matching_pin_passes() {
    let f = fixture(|pin| vec![OTHER_PIN.to_owned(), pin.to_owned()]);
    verify(&f, "hub.test").unwrap();
    assert_eq!(f.observer.take(), None);
}

#[test]
fn other_pin_fails_naming_both_pins() {
    let f = fixture(|_| vec![OTHER_PIN.to_owned()]);
    let err = verify(&f, "hub.test").unwrap_err().to_string();
    assert!(err.contains(&f.server_pin), "{err}");
    assert!(err.contains(OTHER_PIN), "{err}");
    assert_eq!(
        f.observer.take(),
        Some(PinMismatch {
            presented: f.server_pin.clone(),
            expected: vec![OTHER_PIN.to_owned()],
        })
    );
}

#[test]
fn chain_is_checked_before_the_pin() {
    // Right pin, wrong host name: webpki refuses first and no pin mismatch is recorded.
    let f = fixture(|pin| vec![pin.to_owned()]);
    let err = verify(&f, "evil.test").unwrap_err();
    assert!(
        matches!(err, Error::InvalidCertificate(_)),
        "unexpected error: {err}"
    );
    assert_eq!(f.observer.take(), None);
}

#[test]
fn a_front_door_is_accepted_on_the_ca_chain_or_its_own_pin() {
    // Not the hub's pin: a front door, accepted on the chain when front_door_pins are empty.
    let mut f = fixture(|_| vec![OTHER_PIN.to_owned()]);
    f.verifier.front_door = Some(Vec::new());
    verify(&f, "hub.test").unwrap();
    assert!(
        verify(&f, "evil.test").is_err(),
        "the chain is still checked"
    );
    // With front_door_pins, its own pin is what counts (no chain to `ca` needed).
    let pin = f.server_pin.clone();
    f.verifier.front_door = Some(vec![pin.clone()]);
    verify(&f, "evil.test").unwrap();
    assert_eq!(f.observer.take(), None);
}

#[test]
fn a_front_door_outside_front_door_pins_fails_naming_every_pin() {
    let mut f = fixture(|_| vec![OTHER_PIN.to_owned()]);
    let door = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
    f.verifier.front_door = Some(vec![door.clone()]);
    let err = verify(&f, "hub.test").unwrap_err().to_string();
    assert!(
        err.contains("front_door_pins") && err.contains(&door),
        "{err}"
    );
    assert_eq!(
        f.observer.take(),
        Some(PinMismatch {
            presented: f.server_pin.clone(),
            expected: vec![OTHER_PIN.to_owned(), door],
        })
    );
}

#[test]
fn routes() {
    let pins = [OTHER_PIN.to_owned()];
    assert_eq!(Route::of(Some(OTHER_PIN), &pins), Route::Direct);
    assert_eq!(Route::of(Some("sha256//x"), &pins), Route::FrontDoor);
    assert_eq!(Route::of(None, &pins), Route::FrontDoor);
}
