//! The agent against a minimal in-test TLS WebSocket hub: pinning, `hello`, the session loop,
//! drain/reconnect and shutdown.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use agentmesh_protocol::{AgentFrame, CommandFrame, CommandStatus, HubFrame};
use gateway_agent::{run_with_state, AgentState, StateSnapshot};
use support::{kinds, welcome, Event, FakeHub, Pki};
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

#[tokio::test]
async fn wrong_pin_never_sends_hello_and_is_recorded() {
    let pki = Pki::new("edge-01");
    let mut hub = FakeHub::start(&pki.server).await;
    let wrong = "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let mut config = pki.config(hub.addr.port(), &[wrong], "");
    // Without front_door_pins a peer chaining to the CA would be taken for a front door (and
    // then have to show the hub's signature); with them, an unpinned peer fails at TLS.
    config.outbound.front_door_pins = vec![wrong.to_owned()];
    let state = AgentState::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(run_with_state(config, state.clone(), async move {
        let _ = stopped.await;
    }));

    // Two mismatches: the first one is retried, with backoff, not given up on.
    wait_for(&state, "two pin mismatches", |s| s.pin_mismatches >= 2).await;
    let s = state.snapshot();
    assert!(!s.connected);
    assert_eq!(s.connects, 0);
    assert_eq!(
        s.last_presented_pin.as_deref(),
        Some(pki.server.pin.as_str())
    );
    let error = s.last_error.unwrap_or_default();
    assert!(
        error.contains(&pki.server.pin) && error.contains(wrong),
        "{error}"
    );
    // No WebSocket was ever established, so no hello could have been sent.
    assert!(hub.conns.try_recv().is_err());

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(hub.conns.try_recv().is_err());
}

#[tokio::test]
async fn right_pin_sends_hello_and_serves_the_session() {
    let pki = Pki::new("edge-01");
    let mut hub = FakeHub::start(&pki.server).await;
    let other = "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let config = pki.config(hub.addr.port(), &[other, &pki.server.pin], "");
    let state = AgentState::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(run_with_state(config, state.clone(), async move {
        let _ = stopped.await;
    }));

    let mut conn = tokio::time::timeout(WAIT, hub.conns.recv())
        .await
        .unwrap()
        .unwrap();
    let AgentFrame::Hello(hello) = conn.next_frame().await else {
        panic!("first frame is not hello");
    };
    assert_eq!(hello.protocol, 1);
    assert_eq!(hello.agent_id, "edge-01");
    assert_eq!(hello.site, "test-site");
    assert_eq!(hello.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.labels["region"], "eu");
    assert_eq!(hello.labels["role"], "panel");
    assert_eq!(hello.max_concurrency, 3);
    assert!(hello.pending_results.is_empty());
    let names: Vec<&str> = hello.verbs.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["ping", "sysinfo", "create_panel_user"]);
    let user = &hello.verbs[2].params["username"];
    assert!(user.required);
    assert_eq!(hello.verbs[2].timeout_ms, 30_000);
    assert!(!state.snapshot().connected, "connected before welcome");

    conn.send(&welcome("session-1")).await;
    wait_for(&state, "the first session", |s| {
        s.connected && s.session_id.as_deref() == Some("session-1")
    })
    .await;

    // The verb's program does not exist on this host: the command fails to start, and the
    // result says why.
    conn.send(&HubFrame::Command(CommandFrame {
        command_id: "c-1".into(),
        verb: "create_panel_user".into(),
        args: serde_json::json!({"username": "alice"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        timeout_ms: Some(1000),
        requested_by: "ops".into(),
        issued_at: "2026-11-25T08:00:00Z".into(),
    }))
    .await;
    let AgentFrame::Result(result) = conn.next_frame().await else {
        panic!("expected a result");
    };
    assert_eq!(result.command_id, "c-1");
    assert_eq!(result.status, CommandStatus::Failed);
    assert_eq!(result.exit_code, None);
    assert_eq!(result.error.clone().unwrap().code, "spawn_failed");
    // Signed with the agent's key over the frame as sent.
    let cert = pki.agent_cert();
    let der = &mesh_certs::certs_der_from_pem(&cert).unwrap()[0];
    let spki = agentmesh_audit::spki_der_from_cert_der(der).unwrap();
    let signature = result.signature.clone().expect("the result is signed");
    assert!(agentmesh_audit::verify_result_signature(
        &spki,
        &agentmesh_audit::result_digest(&result),
        &signature
    ));

    // Garbage gets an error frame, and the session survives it.
    conn.send_text(r#"{"type":"reboot_now"}"#).await;
    let AgentFrame::Error(error) = conn.next_frame().await else {
        panic!("expected an error frame");
    };
    assert_eq!(error.code, "unknown_type");
    conn.send_text("not json").await;
    let AgentFrame::Error(error) = conn.next_frame().await else {
        panic!("expected an error frame");
    };
    assert_eq!(error.code, "not_json");
    assert!(state.snapshot().connected);

    // Drain: the agent closes with 1001 and comes back with a fresh hello.
    conn.send(&HubFrame::Drain {
        reconnect_after_ms: 0,
    })
    .await;
    assert!(matches!(conn.next().await, Event::Close(Some(1001))));
    let mut conn = tokio::time::timeout(WAIT, hub.conns.recv())
        .await
        .unwrap()
        .unwrap();
    let AgentFrame::Hello(hello) = conn.next_frame().await else {
        panic!("first frame is not hello");
    };
    // c-1 was delivered, so it is not pending...
    assert!(hello.pending_results.is_empty(), "{hello:?}");
    conn.send(&welcome("session-2")).await;
    wait_for(&state, "the second session", |s| {
        s.connected && s.session_id.as_deref() == Some("session-2") && s.connects == 2
    })
    .await;
    // ...but it was delivered less than 120 s before the last session ended (there is no ack
    // in protocol v1), so it is sent again; the hub ignores duplicates.
    let AgentFrame::Result(again) = conn.next_frame().await else {
        panic!("expected the re-sent result");
    };
    assert_eq!(again.command_id, "c-1");
    // It was stored signed: the re-sent frame carries the same signature.
    assert_eq!(again.signature.as_deref(), Some(signature.as_str()));

    // Shutdown closes with 1001 and returns Ok.
    stop.send(()).unwrap();
    assert!(matches!(conn.next().await, Event::Close(Some(1001))));
    tokio::time::timeout(WAIT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!state.snapshot().connected);

    // The agent's own audit log: both sessions, the command before its result, and the
    // result's signature (checked by the verifier) with the agent's pin.
    let records = pki.audit_records();
    let kinds = kinds(&records);
    let requested = kinds.iter().position(|k| k == "command_requested").unwrap();
    let finished = kinds.iter().position(|k| k == "command_result").unwrap();
    assert!(requested < finished, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "agent_connected").count(), 2);
    assert_eq!(
        kinds.iter().filter(|k| *k == "agent_disconnected").count(),
        2
    );
    let connected = &records[kinds.iter().position(|k| k == "agent_connected").unwrap()];
    assert_eq!(connected["details"]["hub_pin"], pki.server.pin.as_str());
    assert_eq!(records[requested]["details"]["args"]["username"], "alice");
    assert_eq!(records[requested]["actor"], "ops");
    let details = &records[finished]["details"];
    assert_eq!(details["signature"], signature.as_str());
    assert_eq!(
        details["agent_pin"],
        mesh_certs::pin_from_pem(&cert).unwrap().as_str()
    );
}

#[tokio::test]
async fn hub_close_during_handshake_is_retried() {
    let pki = Pki::new("edge-01");
    let mut hub = FakeHub::start(&pki.server).await;
    let config = pki.config(hub.addr.port(), &[&pki.server.pin], "");
    let state = AgentState::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(run_with_state(config, state.clone(), async move {
        let _ = stopped.await;
    }));

    let mut conn = tokio::time::timeout(WAIT, hub.conns.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(conn.next_frame().await, AgentFrame::Hello(_)));
    conn.to_agent
        .send(tokio_tungstenite::tungstenite::Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 4001u16.into(),
                reason: "pin not enrolled".into(),
            },
        )))
        .await
        .unwrap();
    wait_for(&state, "the refusal to be recorded", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("4001") && e.contains("pin not enrolled"))
    })
    .await;
    // And it comes back.
    let mut conn = tokio::time::timeout(WAIT, hub.conns.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(conn.next_frame().await, AgentFrame::Hello(_)));

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let records = pki.audit_records();
    assert_eq!(kinds(&records), ["auth_failed"]);
    assert_eq!(records[0]["details"]["code"], 4001);
}
