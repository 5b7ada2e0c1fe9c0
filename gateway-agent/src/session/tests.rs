#![allow(clippy::unwrap_used)]

use super::*;
use crate::tls::Route;
use agentmesh_protocol::close::PROTOCOL_ERROR;
use agentmesh_protocol::CommandStatus;
use agentmesh_protocol::{HelloFrame, PROTOCOL_VERSION};
use futures_util::SinkExt as _;
use tokio::io::DuplexStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

const LIMIT: usize = 4096;

async fn pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let config = crate::connect::websocket_config(LIMIT);
    (
        WebSocketStream::from_raw_socket(a, Role::Client, Some(config)).await,
        WebSocketStream::from_raw_socket(b, Role::Server, None).await,
    )
}

fn welcome(heartbeat_secs: u64) -> WelcomeFrame {
    WelcomeFrame {
        protocol: PROTOCOL_VERSION,
        session_id: "s".into(),
        server_time: String::new(),
        heartbeat_secs,
        max_message_bytes: LIMIT as u64,
        signature: None,
        hub_key: None,
        challenge_follows: false,
    }
}

/// Commands over an executor with only the built-ins, storing into a fresh temp dir.
fn test_commands() -> (tempfile::TempDir, Commands) {
    let dir = tempfile::tempdir().unwrap();
    let (executor, results) = crate::exec::Executor::open_with(crate::exec::ExecSettings {
        agent_id: "edge-01".into(),
        state_dir: dir.path().to_path_buf(),
        verbs: Vec::new(),
        max_concurrency: 2,
        commands_per_minute: 100,
        result_retention: Duration::from_secs(3600),
        max_stored_results: 100,
        audit: None,
        signer: crate::signing::Signer::disabled(),
    })
    .unwrap();
    (dir, Commands::new(executor, results))
}

/// Runs `serve` in a task; returns its handle and the shutdown switch.
fn spawn_serve(
    mut agent: WebSocketStream<DuplexStream>,
    heartbeat_secs: u64,
) -> (tokio::task::JoinHandle<SessionEnd>, watch::Sender<bool>) {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let (_dir, mut commands) = test_commands();
        serve(
            &mut agent,
            &welcome(heartbeat_secs),
            LIMIT,
            &mut commands,
            &mut crate::renew::Renewal::disabled(),
            &mut stop_rx,
        )
        .await
    });
    (handle, stop_tx)
}

/// Reads until the connection ends (completing the closing handshake), then drops it as a
/// server does; returns the close code received.
async fn next_close(mut hub: WebSocketStream<DuplexStream>) -> Option<u16> {
    let mut code = None;
    while let Some(Ok(m)) = hub.next().await {
        if let Message::Close(f) = m {
            code = f.map(|f| u16::from(f.code));
        }
    }
    code
}

#[tokio::test(start_paused = true)]
async fn silent_hub_is_dropped_after_three_heartbeats() {
    let (agent, mut hub) = pair().await;
    let started = Instant::now();
    let (handle, _stop) = spawn_serve(agent, 20);
    // Pings keep the session alive: five of them, 30 s apart.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        hub.send(Message::Ping(Default::default())).await.unwrap();
    }
    let hub_side = tokio::spawn(async move { next_close(hub).await });
    let end = handle.await.unwrap();
    assert!(
        matches!(&end, SessionEnd::Lost(m) if m.contains("60s")),
        "{end:?}"
    );
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(210), "{elapsed:?}");
    assert_eq!(hub_side.await.unwrap(), Some(GOING_AWAY));
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let (agent, mut hub) = pair().await;
    let (handle, _stop) = spawn_serve(agent, 20);
    hub.send(Message::text("x".repeat(LIMIT + 1)))
        .await
        .unwrap();
    assert_eq!(next_close(hub).await, Some(MESSAGE_TOO_BIG));
    let end = handle.await.unwrap();
    assert!(
        matches!(&end, SessionEnd::Lost(m) if m.contains("oversized")),
        "{end:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_with_1001() {
    let (agent, mut hub) = pair().await;
    let (handle, stop) = spawn_serve(agent, 20);
    // A command first, to prove the session is live.
    let command = r#"{"type":"command","command_id":"c","verb":"nope","args":{}}"#;
    hub.send(Message::text(command)).await.unwrap();
    let Some(Ok(Message::Text(reply))) = hub.next().await else {
        panic!("no reply");
    };
    let reply = agentmesh_protocol::decode_agent_frame(reply.as_bytes(), LIMIT).unwrap();
    let AgentFrame::Result(result) = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(result.status, CommandStatus::Rejected);
    stop.send(true).unwrap();
    assert_eq!(next_close(hub).await, Some(GOING_AWAY));
    assert_eq!(handle.await.unwrap(), SessionEnd::Shutdown);
}

#[tokio::test]
async fn hub_close_code_is_reported() {
    let (agent, mut hub) = pair().await;
    let (handle, _stop) = spawn_serve(agent, 20);
    let frame = CloseFrame {
        code: CloseCode::from(agentmesh_protocol::close::REVOKED),
        reason: "revoked by admin".into(),
    };
    hub.close(Some(frame)).await.unwrap();
    tokio::spawn(async move { next_close(hub).await });
    assert_eq!(
        handle.await.unwrap(),
        SessionEnd::Closed {
            code: Some(4004),
            reason: "revoked by admin".into()
        }
    );
}

#[tokio::test]
async fn handshake_refuses_another_protocol_version() {
    let (mut agent, mut hub) = pair().await;
    let hub_side = tokio::spawn(async move {
        let hello = hub.next().await;
        assert!(matches!(hello, Some(Ok(Message::Text(_)))));
        let mut w = welcome(20);
        w.protocol = 2;
        hub.send(Message::text(HubFrame::Welcome(w).to_json()))
            .await
            .unwrap();
        next_close(hub).await
    });
    let hello = HelloFrame {
        protocol: PROTOCOL_VERSION,
        agent_id: "a".into(),
        version: String::new(),
        site: String::new(),
        hostname: String::new(),
        labels: Default::default(),
        verbs: Vec::new(),
        max_concurrency: 1,
        pending_results: Vec::new(),
        nonce: None,
    };
    let key = test_key();
    let err = handshake(
        &mut agent,
        &hello,
        LIMIT,
        Duration::from_secs(5),
        &direct(&key),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HandshakeError::Protocol(2)), "{err}");
    assert!(err.to_string().contains("upgrade"), "{err}");
    assert_eq!(hub_side.await.unwrap(), Some(PROTOCOL_ERROR));
}

fn test_key() -> ProofKey {
    let ca = mesh_certs::Ca::generate("session test CA").unwrap();
    let issued = ca.issue_agent("a", mesh_certs::Validity::days(1)).unwrap();
    ProofKey::from_pem(&issued.key_pem).unwrap()
}

fn direct(key: &ProofKey) -> HandshakeProof<'_> {
    HandshakeProof {
        server_pins: &[],
        route: Route::Direct,
        key,
    }
}
