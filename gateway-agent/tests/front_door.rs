//! The agent behind a TLS-terminating front door (played by the in-test hub, whose certificate
//! chains to the CA but is not in `server_pins`): the hub behind it must sign `welcome` with a
//! pinned key, and a `challenge` is answered with the agent's own key.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use agentmesh_protocol::{proof, AgentFrame, ChallengeFrame, HubFrame};
use gateway_agent::{run_with_state, AgentState, StateSnapshot};
use mesh_certs::{Issued, Validity};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
};
use support::{welcome, Pki, TestHub};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

async fn wait_for(state: &AgentState, what: &str, pred: impl FnMut(&StateSnapshot) -> bool) {
    if tokio::time::timeout(WAIT, state.wait_for(pred))
        .await
        .is_err()
    {
        panic!(
            "timed out waiting for {what}; state: {:?}",
            state.snapshot()
        );
    }
}

fn spki_of(issued: &Issued) -> Vec<u8> {
    let der = mesh_certs::certs_der_from_pem(&issued.cert_pem).unwrap();
    mesh_certs::spki_der_from_cert_der(&der[0]).unwrap()
}

/// `welcome` for `session_id`, signed by `signer` over `nonce`.
fn signed_welcome(signer: &Issued, nonce: &str, session_id: &str, challenge: bool) -> HubFrame {
    let pkcs8 = mesh_certs::p256_pkcs8_der_from_pem(&signer.key_pem).unwrap();
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).unwrap();
    let message = proof::welcome_message(nonce, "edge-01", session_id);
    let sig = key.sign(&rng, &message).unwrap();
    let HubFrame::Welcome(mut w) = welcome(session_id) else {
        unreachable!()
    };
    w.signature = Some(proof::encode(sig.as_ref()));
    w.hub_key = Some(proof::encode(&spki_of(signer)));
    w.challenge_follows = challenge;
    HubFrame::Welcome(w)
}

async fn hello_nonce(conn: &mut support::Conn) -> String {
    let AgentFrame::Hello(hello) = conn.next_frame().await else {
        panic!("first frame is not hello");
    };
    let nonce = hello.nonce.expect("every hello carries a nonce");
    assert!(proof::is_valid_nonce(&nonce), "{nonce}");
    nonce
}

#[tokio::test]
async fn behind_a_front_door_only_a_welcome_signed_by_a_pinned_hub_key_is_accepted() {
    let pki = Pki::new("edge-01");
    let hub_key = pki.ca.issue_server("hub", &[], Validity::days(1)).unwrap();
    let mut door = TestHub::start(&pki.server).await;
    // server_pins hold the hub's pin; the front door's certificate chains to the CA.
    let config = pki.config(door.addr.port(), &[&hub_key.pin], "");
    let state = AgentState::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(run_with_state(config, state.clone(), async move {
        let _ = stopped.await;
    }));

    // 1. Unsigned: the front door cannot vouch for the hub.
    let mut conn = tokio::time::timeout(WAIT, door.conns.recv())
        .await
        .unwrap()
        .unwrap();
    let first_nonce = hello_nonce(&mut conn).await;
    conn.send(&welcome("s-1")).await;
    wait_for(&state, "an unsigned welcome refused", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not signed"))
    })
    .await;
    assert!(!state.snapshot().connected);

    // 2. Signed by the front door's own key, which is not in server_pins: loud pin mismatch.
    let mut conn = tokio::time::timeout(WAIT, door.conns.recv())
        .await
        .unwrap()
        .unwrap();
    let nonce = hello_nonce(&mut conn).await;
    assert_ne!(nonce, first_nonce, "a fresh nonce per connection");
    conn.send(&signed_welcome(&pki.server, &nonce, "s-2", false))
        .await;
    wait_for(&state, "the unpinned key refused", |s| {
        s.pin_mismatches >= 1
    })
    .await;
    let snap = state.snapshot();
    assert_eq!(
        snap.last_presented_pin.as_deref(),
        Some(pki.server.pin.as_str())
    );
    assert!(!snap.connected);

    // 3. A replayed signature (over another nonce) by the pinned key: refused.
    let mut conn = tokio::time::timeout(WAIT, door.conns.recv())
        .await
        .unwrap()
        .unwrap();
    hello_nonce(&mut conn).await;
    conn.send(&signed_welcome(&hub_key, &nonce, "s-3", false))
        .await;
    wait_for(&state, "a replayed welcome refused", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("does not verify"))
    })
    .await;

    // 4. Signed by the pinned hub key over this nonce, then a challenge: answered with the
    // agent certificate's key, then connected.
    let mut conn = tokio::time::timeout(WAIT, door.conns.recv())
        .await
        .unwrap()
        .unwrap();
    let nonce = hello_nonce(&mut conn).await;
    conn.send(&signed_welcome(&hub_key, &nonce, "s-4", true))
        .await;
    let challenge = proof::encode_nonce(&[5u8; proof::NONCE_BYTES]);
    conn.send(&HubFrame::Challenge(ChallengeFrame {
        nonce: challenge.clone(),
    }))
    .await;
    let AgentFrame::ChallengeResponse(answer) = conn.next_frame().await else {
        panic!("the challenge is answered first");
    };
    let cert = pki.agent_cert();
    let der = mesh_certs::certs_der_from_pem(&cert).unwrap();
    let spki = mesh_certs::spki_der_from_cert_der(&der[0]).unwrap();
    let point = mesh_certs::ec_p256_point_from_spki(&spki).unwrap();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .verify(
            &proof::challenge_message(&challenge, "edge-01", "s-4"),
            &proof::decode(&answer.signature).unwrap(),
        )
        .expect("signed by the agent certificate's key");
    wait_for(&state, "connected", |s| {
        s.connected && s.session_id.as_deref() == Some("s-4")
    })
    .await;

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
