//! Welcome signatures (good, wrong key, unpinned key, tampered, missing) and challenge answers,
//! with keys from mesh-certs.

use agentmesh_protocol::PROTOCOL_VERSION;
use ring::signature::KeyPair as _;

use super::*;

const NONCE: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const AGENT: &str = "edge-01";

/// A hub key: its SPKI (as the certificate holds it), its pin and a signer.
struct Hub {
    spki: Vec<u8>,
    pin: String,
    key: EcdsaKeyPair,
}

fn hub() -> Hub {
    let ca = mesh_certs::Ca::generate("proof test CA").unwrap();
    let issued = ca
        .issue_server("hub.test", &[], mesh_certs::Validity::days(1))
        .unwrap();
    let der = mesh_certs::certs_der_from_pem(&issued.cert_pem).unwrap();
    let spki = mesh_certs::spki_der_from_cert_der(&der[0]).unwrap();
    let pkcs8 = mesh_certs::p256_pkcs8_der_from_pem(&issued.key_pem).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &pkcs8,
        &SystemRandom::new(),
    )
    .unwrap();
    assert_eq!(
        mesh_certs::ec_p256_point_from_spki(&spki).unwrap(),
        key.public_key().as_ref()
    );
    Hub {
        pin: issued.pin,
        spki,
        key,
    }
}

fn signed_by(signer: &Hub, claimed: &Hub, session_id: &str) -> WelcomeFrame {
    let message = proof::welcome_message(NONCE, AGENT, session_id);
    let sig = signer.key.sign(&SystemRandom::new(), &message).unwrap();
    WelcomeFrame {
        protocol: PROTOCOL_VERSION,
        session_id: session_id.into(),
        server_time: String::new(),
        heartbeat_secs: 20,
        max_message_bytes: 1024,
        signature: Some(proof::encode(sig.as_ref())),
        hub_key: Some(proof::encode(&claimed.spki)),
        challenge_follows: false,
    }
}

fn check(
    welcome: &WelcomeFrame,
    pins: &[String],
    route: Route,
) -> Result<Option<String>, ProofError> {
    check_welcome(welcome, NONCE, AGENT, pins, route)
}

#[test]
fn a_good_signature_by_a_pinned_key_passes_on_either_route() {
    let h = hub();
    let w = signed_by(&h, &h, "s-1");
    for route in [Route::Direct, Route::FrontDoor] {
        assert_eq!(
            check(&w, std::slice::from_ref(&h.pin), route),
            Ok(Some(h.pin.clone()))
        );
    }
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let (real, other) = (hub(), hub());
    // Claims the pinned key, signed by another one (a proxy without the hub's key).
    let w = signed_by(&other, &real, "s-1");
    assert!(matches!(
        check(&w, std::slice::from_ref(&real.pin), Route::FrontDoor),
        Err(ProofError::BadSignature(_))
    ));
}

#[test]
fn a_key_not_in_server_pins_is_refused_naming_both_pins() {
    let (h, pinned) = (hub(), hub());
    let w = signed_by(&h, &h, "s-1");
    let err = check(&w, std::slice::from_ref(&pinned.pin), Route::Direct).unwrap_err();
    assert_eq!(
        err,
        ProofError::KeyNotPinned {
            presented: h.pin.clone(),
            expected: vec![pinned.pin.clone()],
        }
    );
    let text = err.to_string();
    assert!(
        text.contains(&h.pin) && text.contains(&pinned.pin),
        "{text}"
    );
}

#[test]
fn a_tampered_welcome_or_another_nonce_is_refused() {
    let h = hub();
    let pins = [h.pin.clone()];
    let mut w = signed_by(&h, &h, "s-1");
    w.session_id = "s-2".into();
    assert!(matches!(
        check(&w, &pins, Route::Direct),
        Err(ProofError::BadSignature(_))
    ));
    let w = signed_by(&h, &h, "s-1");
    let other_nonce = "3q2+796tvu/erb7v3q2+796tvu/erb7v3q2+796tvu8=";
    assert!(check_welcome(&w, other_nonce, AGENT, &pins, Route::Direct).is_err());
    assert!(check_welcome(&w, NONCE, "edge-02", &pins, Route::Direct).is_err());
    let mut w = signed_by(&h, &h, "s-1");
    w.signature = Some("not base64!".into());
    assert!(matches!(
        check(&w, &pins, Route::Direct),
        Err(ProofError::BadSignature(_))
    ));
    let mut w = signed_by(&h, &h, "s-1");
    w.hub_key = None;
    assert!(matches!(
        check(&w, &pins, Route::Direct),
        Err(ProofError::BadSignature(_))
    ));
}

#[test]
fn an_unsigned_welcome_passes_only_on_a_direct_connection() {
    let h = hub();
    let mut w = signed_by(&h, &h, "s-1");
    w.signature = None;
    w.hub_key = None;
    let pins = [h.pin.clone()];
    assert_eq!(check(&w, &pins, Route::Direct), Ok(None));
    assert_eq!(
        check(&w, &pins, Route::FrontDoor),
        Err(ProofError::Unsigned)
    );
}

#[test]
fn challenge_answers_verify_with_the_certificate_key_only() {
    let ca = mesh_certs::Ca::generate("proof test CA").unwrap();
    let agent = ca
        .issue_agent(AGENT, mesh_certs::Validity::days(1))
        .unwrap();
    let key = ProofKey::from_pem(&agent.key_pem).unwrap();
    let sig = key.sign_challenge(NONCE, AGENT, "s-1").unwrap();
    let der = mesh_certs::certs_der_from_pem(&agent.cert_pem).unwrap();
    let spki = mesh_certs::spki_der_from_cert_der(&der[0]).unwrap();
    let point = mesh_certs::ec_p256_point_from_spki(&spki).unwrap();
    let verify = |message: Vec<u8>| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
            .verify(&message, &proof::decode(&sig).unwrap())
            .is_ok()
    };
    assert!(verify(proof::challenge_message(NONCE, AGENT, "s-1")));
    assert!(!verify(proof::challenge_message(NONCE, AGENT, "s-2")));
    // A challenge signature is never a welcome signature.
    assert!(!verify(proof::welcome_message(NONCE, AGENT, "s-1")));
    assert!(fresh_nonce().is_some_and(|n| proof::is_valid_nonce(&n)));
    assert_ne!(fresh_nonce(), fresh_nonce());
}

fn golden(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/tests/golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_golden_signed_welcome_is_a_real_test_vector() {
    let limit = agentmesh_protocol::DEFAULT_MAX_MESSAGE_BYTES;
    let agentmesh_protocol::AgentFrame::Hello(hello) =
        agentmesh_protocol::decode_agent_frame(golden("agent_hello_nonce.json").as_bytes(), limit)
            .unwrap()
    else {
        panic!("not a hello")
    };
    let agentmesh_protocol::HubFrame::Welcome(welcome) =
        agentmesh_protocol::decode_hub_frame(golden("hub_welcome_signed.json").as_bytes(), limit)
            .unwrap()
    else {
        panic!("not a welcome")
    };
    let spki = proof::decode(welcome.hub_key.as_deref().unwrap()).unwrap();
    let pin = mesh_certs::pin_from_spki_der(&spki);
    let nonce = hello.nonce.as_deref().unwrap();
    let pins = [pin.clone()];
    let checked = check_welcome(&welcome, nonce, &hello.agent_id, &pins, Route::FrontDoor);
    assert_eq!(checked, Ok(Some(pin)));
}
