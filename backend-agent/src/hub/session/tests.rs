//! Session behaviour over in-memory streams (`tokio::io::duplex`), with paused time: no TLS,
//! no sockets, no waiting in real time.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::{close, ErrorBody, HelloFrame, HubFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::super::identity::PeerIdentity;
use super::super::{HubContext, SessionEvents, TaskCounter};
use crate::audit::Audit;
use crate::audit_flood::FailureAudit;
use crate::config::{AuditConfig, HubConfig, LimitsConfig};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// An events sink that does nothing: these tests watch the registry and the wire.
pub(super) struct NoEvents;
impl SessionEvents for NoEvents {}

pub(super) const AGENT: &str = "edge-01";
const PIN: &str = "sha256//test-pin";

pub(super) struct Fixture {
    pub(super) ctx: Arc<HubContext>,
    pub(super) stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

pub(super) fn fixture() -> Fixture {
    fixture_with(Arc::new(NoEvents))
}

/// A fixture whose sessions report to `events`.
pub(super) fn fixture_with(events: Arc<dyn SessionEvents>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = mesh_certs::Ca::generate("session test CA").unwrap();
    ca.save(&dir.path().join("ca")).unwrap();
    let server = ca
        .issue_server("localhost", &[], mesh_certs::Validity::days(1))
        .unwrap();
    server.save(&dir.path().join("server")).unwrap();
    let (tls, client_verifier) = super::super::tls::server_config(
        &dir.path().join("server/cert.pem"),
        &dir.path().join("server/key.pem"),
        &dir.path().join("ca/ca.pem"),
    )
    .unwrap();
    let audit_config: AuditConfig =
        toml::from_str(&format!("path = {:?}", dir.path().join("audit.log"))).unwrap();
    let audit = Arc::new(Audit::open(&audit_config).unwrap().0);
    let registry = Arc::new(Registry::default());
    registry.enrol(AGENT, PIN);
    let (stop, shutdown) = watch::channel(false);
    let ctx = HubContext {
        config: HubConfig::default(),
        registry,
        metrics: Arc::new(Metrics::default()),
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        client_verifier,
        events,
        shutdown,
        tasks: TaskCounter::default(),
        limits: Arc::new(crate::reload::Swap::new(crate::limits::RateLimits::new(
            &LimitsConfig::default(),
        ))),
        live: Arc::new(crate::hub::LiveSettings::new(
            &HubConfig::default(),
            &LimitsConfig::default(),
        )),
        failures: Arc::new(FailureAudit::new(audit.clone())),
        audit,
        hub_key: Arc::new(
            super::super::proof::HubKey::load(
                &dir.path().join("server/cert.pem"),
                &dir.path().join("server/key.pem"),
            )
            .unwrap(),
        ),
    };
    Fixture {
        ctx: Arc::new(ctx),
        stop,
        _dir: dir,
    }
}

pub(super) fn hello() -> HelloFrame {
    serde_json::from_value(serde_json::json!({
        "type": "hello", "protocol": 1, "agent_id": AGENT, "version": "test",
        "site": "s", "hostname": "h", "labels": {}, "verbs": [],
        "max_concurrency": 1, "pending_results": []
    }))
    .unwrap()
}

pub(super) fn identity() -> PeerIdentity {
    PeerIdentity {
        cn: AGENT.to_owned(),
        pin: PIN.to_owned(),
        spki: vec![1, 2, 3],
        via_proxy: None,
    }
}

/// Starts a session on one end of a duplex pipe of `buffer` bytes; returns the agent's end.
pub(super) async fn start(
    ctx: &Arc<HubContext>,
    buffer: usize,
) -> (WebSocketStream<DuplexStream>, tokio::task::JoinHandle<()>) {
    let (hub_io, agent_io) = tokio::io::duplex(buffer);
    let hub_ws = WebSocketStream::from_raw_socket(hub_io, Role::Server, None).await;
    let agent_ws = WebSocketStream::from_raw_socket(agent_io, Role::Client, None).await;
    let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
    let task = tokio::spawn(super::run(ctx.clone(), hub_ws, identity(), hello(), peer));
    (agent_ws, task)
}

pub(super) async fn next_text(ws: &mut WebSocketStream<DuplexStream>) -> serde_json::Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

pub(super) async fn close_code(ws: &mut WebSocketStream<DuplexStream>) -> u16 {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => return f.code.into(),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_is_dropped_at_the_write_deadline() {
    let f = fixture();
    let (mut agent, task) = start(&f.ctx, 4 * 1024).await;
    assert_eq!(next_text(&mut agent).await["type"], "welcome");
    let session = f.ctx.registry.session(AGENT).expect("attached");
    // Far more than the pipe holds; the agent never reads again.
    let big = HubFrame::Error(ErrorBody::new("filler", "x".repeat(256 * 1024)));
    session.tx.try_send(Box::new(big)).unwrap();
    // Paused time jumps to the deadline once the write is stuck.
    tokio::time::timeout(super::WRITE_DEADLINE * 3, task)
        .await
        .expect("the session ended by itself")
        .unwrap();
    assert_eq!(
        f.ctx
            .metrics
            .hub_sessions_write_timeout
            .load(Ordering::Relaxed),
        1
    );
    assert!(f.ctx.registry.session(AGENT).is_none(), "detached");
    assert!(!f.ctx.registry.get(AGENT).unwrap().connected);
    drop(agent);
}

#[tokio::test(start_paused = true)]
async fn a_revocation_before_hello_is_final_at_attach() {
    let f = fixture();
    // Admitted at the handshake, revoked before `hello` arrives.
    f.ctx.registry.revoke_agent(AGENT);
    let (mut agent, task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(close_code(&mut agent).await, close::REVOKED);
    task.await.unwrap();
    let view = f.ctx.registry.get(AGENT).unwrap();
    assert!(!view.connected, "never listed as connected");
    assert_eq!(view.session_id, None);
    assert_eq!(f.ctx.metrics.hub_rejected_count("revoked_before_hello"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_newer_session_supersedes_the_older_with_4003() {
    let f = fixture();
    let (mut first, first_task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(next_text(&mut first).await["type"], "welcome");
    let (mut second, _second_task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(next_text(&mut second).await["type"], "welcome");
    assert_eq!(close_code(&mut first).await, close::SUPERSEDED);
    first_task.await.unwrap();
    assert!(
        f.ctx.registry.get(AGENT).unwrap().connected,
        "the newer stays"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_frames_are_answered_then_the_session_is_closed_4002() {
    let f = fixture();
    let (mut agent, task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(next_text(&mut agent).await["type"], "welcome");
    for _ in 0..=super::MAX_BAD_FRAMES {
        agent.send(Message::text("{not json")).await.unwrap();
        assert_eq!(next_text(&mut agent).await["type"], "error");
    }
    assert_eq!(close_code(&mut agent).await, close::PROTOCOL_ERROR);
    task.await.unwrap();
    assert!(!f.ctx.registry.get(AGENT).unwrap().connected);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_session_is_pinged_every_heartbeat() {
    let f = fixture();
    let (mut agent, _task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(next_text(&mut agent).await["type"], "welcome");
    let heartbeat = Duration::from_secs(f.ctx.config.heartbeat_secs);
    let msg = tokio::time::timeout(heartbeat * 2, agent.next())
        .await
        .expect("a ping within two heartbeats");
    assert!(matches!(msg, Some(Ok(Message::Ping(_)))), "{msg:?}");
}

#[tokio::test(start_paused = true)]
async fn a_peer_silent_for_three_heartbeats_is_dropped() {
    let f = fixture();
    let (mut agent, task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(next_text(&mut agent).await["type"], "welcome");
    // From now on the agent neither reads nor writes, so it never answers a ping.
    let heartbeat = Duration::from_secs(f.ctx.config.heartbeat_secs);
    tokio::time::timeout(heartbeat * 6, task)
        .await
        .expect("dropped after three silent intervals")
        .unwrap();
    assert_eq!(
        f.ctx.metrics.hub_sessions_timed_out.load(Ordering::Relaxed),
        1
    );
    assert!(!f.ctx.registry.get(AGENT).unwrap().connected);
    drop(agent);
}

/// An agent key and its certificate's SubjectPublicKeyInfo.
fn agent_key() -> (ring::signature::EcdsaKeyPair, Vec<u8>) {
    let ca = mesh_certs::Ca::generate("proof test CA").unwrap();
    let issued = ca
        .issue_agent(AGENT, mesh_certs::Validity::days(1))
        .unwrap();
    let der = mesh_certs::certs_der_from_pem(&issued.cert_pem).unwrap();
    let spki = mesh_certs::spki_der_from_cert_der(&der[0]).unwrap();
    let pkcs8 = mesh_certs::p256_pkcs8_der_from_pem(&issued.key_pem).unwrap();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &pkcs8,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    (key, spki)
}

const NONCE: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

/// A session whose certificate (with `spki`) a trusted proxy forwarded, `hello` with a nonce.
async fn start_forwarded(
    ctx: &Arc<HubContext>,
    spki: Vec<u8>,
) -> (WebSocketStream<DuplexStream>, tokio::task::JoinHandle<()>) {
    let (hub_io, agent_io) = tokio::io::duplex(64 * 1024);
    let hub_ws = WebSocketStream::from_raw_socket(hub_io, Role::Server, None).await;
    let agent_ws = WebSocketStream::from_raw_socket(agent_io, Role::Client, None).await;
    let peer: SocketAddr = "192.0.2.8:4000".parse().unwrap();
    let identity = PeerIdentity {
        spki,
        via_proxy: Some("sha256//proxy-pin".to_owned()),
        ..identity()
    };
    let mut hello = hello();
    hello.nonce = Some(NONCE.to_owned());
    let task = tokio::spawn(super::run(ctx.clone(), hub_ws, identity, hello, peer));
    (agent_ws, task)
}

/// Reads `welcome` and `challenge`; checks the hub's signature; returns (session id, nonce).
async fn welcome_and_challenge(agent: &mut WebSocketStream<DuplexStream>) -> (String, String) {
    use agentmesh_protocol::proof;
    let welcome = next_text(agent).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["challenge_follows"], true);
    let session_id = welcome["session_id"].as_str().unwrap().to_owned();
    let spki = proof::decode(welcome["hub_key"].as_str().unwrap()).unwrap();
    let point = mesh_certs::ec_p256_point_from_spki(&spki).unwrap();
    let sig = proof::decode(welcome["signature"].as_str().unwrap()).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
        .verify(&proof::welcome_message(NONCE, AGENT, &session_id), &sig)
        .expect("welcome signed by the hub key over this session");
    let challenge = next_text(agent).await;
    assert_eq!(challenge["type"], "challenge", "{challenge}");
    let nonce = challenge["nonce"].as_str().unwrap().to_owned();
    assert!(proof::is_valid_nonce(&nonce));
    (session_id, nonce)
}

fn answer(key: &ring::signature::EcdsaKeyPair, nonce: &str, session_id: &str) -> Message {
    let message = agentmesh_protocol::proof::challenge_message(nonce, AGENT, session_id);
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), &message)
        .unwrap();
    let frame = serde_json::json!({
        "type": "challenge_response",
        "signature": agentmesh_protocol::proof::encode(sig.as_ref()),
    });
    Message::text(frame.to_string())
}

#[tokio::test(start_paused = true)]
async fn a_forwarded_certificate_proven_held_is_attached() {
    let f = fixture();
    let (key, spki) = agent_key();
    let (mut agent, _task) = start_forwarded(&f.ctx, spki).await;
    assert!(
        f.ctx.registry.session(AGENT).is_none(),
        "not before the proof"
    );
    let (session_id, nonce) = welcome_and_challenge(&mut agent).await;
    agent.send(answer(&key, &nonce, &session_id)).await.unwrap();
    let ctx = f.ctx.clone();
    tokio::time::timeout(Duration::from_secs(5), async move {
        while ctx.registry.session(AGENT).is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("attached after the proof");
}

#[tokio::test(start_paused = true)]
async fn a_forwarded_certificate_whose_key_is_not_held_is_closed_4001_unattached() {
    let f = fixture();
    let (_, spki) = agent_key();
    let (other_key, _) = agent_key();
    let (mut agent, task) = start_forwarded(&f.ctx, spki).await;
    let (session_id, nonce) = welcome_and_challenge(&mut agent).await;
    agent
        .send(answer(&other_key, &nonce, &session_id))
        .await
        .unwrap();
    assert_eq!(close_code(&mut agent).await, close::UNAUTHORISED);
    task.await.unwrap();
    assert!(!f.ctx.registry.get(AGENT).unwrap().connected);
    assert_eq!(f.ctx.metrics.hub_rejected_count("challenge_failed"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_challenge_times_out_with_4001() {
    let f = fixture();
    let (_, spki) = agent_key();
    let (mut agent, task) = start_forwarded(&f.ctx, spki).await;
    welcome_and_challenge(&mut agent).await;
    assert_eq!(close_code(&mut agent).await, close::UNAUTHORISED);
    task.await.unwrap();
    assert!(!f.ctx.registry.get(AGENT).unwrap().connected);
    assert_eq!(f.ctx.metrics.hub_rejected_count("challenge_timeout"), 1);
}
