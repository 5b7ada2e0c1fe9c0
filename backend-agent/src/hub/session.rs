//! An established agent session: frames in, bounded queue out, heartbeats, supersede, drain.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::{
    close, decode_agent_frame, AgentFrame, ErrorBody, HelloFrame, HubFrame, WelcomeFrame,
    PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, info, warn};

use super::handshake::HubSocket;
use super::identity::PeerIdentity;
use super::HubContext;
use crate::audit::kinds;
use crate::clock;
use crate::registry::{LiveSession, SessionShared};
use agentmesh_audit::AuditEvent;

/// Bad frames tolerated in one session before it is closed with 4002.
const MAX_BAD_FRAMES: u32 = 100;

/// Runs a session that passed every check until it ends, then forgets it.
pub(super) async fn run(
    ctx: Arc<HubContext>,
    mut ws: HubSocket,
    identity: PeerIdentity,
    hello: HelloFrame,
    peer: SocketAddr,
) {
    let agent_id = hello.agent_id.clone();
    let session_id = uuid::Uuid::now_v7().to_string();
    let (tx, mut rx) = mpsc::channel(ctx.config.send_queue);
    let (close_tx, mut close_rx) = watch::channel(None);
    let shared = Arc::new(SessionShared::default());
    shared.touch();
    let live = LiveSession {
        session_id: session_id.clone(),
        tx,
        close: Arc::new(close_tx),
        shared: shared.clone(),
    };

    let welcome = HubFrame::Welcome(WelcomeFrame {
        protocol: PROTOCOL_VERSION,
        session_id: session_id.clone(),
        server_time: clock::now_rfc3339(),
        heartbeat_secs: ctx.config.heartbeat_secs,
        max_message_bytes: ctx.config.max_message_bytes as u64,
    });
    if let Err(e) = ws.send(Message::text(welcome.to_json())).await {
        warn!(error = %e, "could not send welcome");
        return;
    }
    if let Some(old) = ctx
        .registry
        .attach(hello.clone(), &identity.pin, &peer.to_string(), live)
    {
        ctx.metrics
            .hub_sessions_superseded
            .fetch_add(1, Ordering::Relaxed);
        info!(old.session_id = %old.session_id, "superseding older session");
        old.request_close(close::SUPERSEDED, "superseded by a newer session");
    }
    ctx.metrics
        .hub_sessions_started
        .fetch_add(1, Ordering::Relaxed);
    info!(
        session.id = %session_id,
        cert.pin = %identity.pin,
        verbs = hello.verbs.len(),
        version = %hello.version,
        "agent connected"
    );
    ctx.events.connected(&hello, &session_id, &identity.pin);
    ctx.audit.record(
        AuditEvent::new(kinds::AGENT_CONNECTED)
            .agent(agent_id.as_str())
            .details(serde_json::json!({
                "session_id": session_id,
                "pin": identity.pin,
                "remote_addr": peer.to_string(),
                "via_proxy": identity.via_proxy,
                "version": hello.version,
            })),
    );

    let heartbeat = Duration::from_secs(ctx.config.heartbeat_secs);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut shutdown = ctx.shutdown.clone();
    let mut bad_frames = 0u32;
    let end = loop {
        tokio::select! {
            biased;
            _ = close_rx.changed() => {
                let (code, reason) = close_rx.borrow_and_update().clone().unwrap_or((close::NORMAL, String::new()));
                close_ws(&mut ws, code, &reason).await;
                break if code == close::SUPERSEDED { "superseded" } else { "closed by hub" };
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    shared.touch();
                    match decode_agent_frame(text.as_bytes(), ctx.config.max_message_bytes) {
                        Ok(AgentFrame::Hello(_)) => {
                            bad_frames += 1;
                            let _ = send_error(&mut ws, "duplicate_hello", "hello is only valid as the first frame").await;
                        }
                        Ok(frame) => ctx.events.frame(&agent_id, &identity.spki, frame).await,
                        Err(e) => {
                            bad_frames += 1;
                            warn!(error = %e, "bad frame from agent");
                            let _ = send_error(&mut ws, e.code(), &e.to_string()).await;
                        }
                    }
                    if bad_frames > MAX_BAD_FRAMES {
                        close_ws(&mut ws, close::PROTOCOL_ERROR, "too many bad frames").await;
                        break "too many bad frames";
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    shared.touch();
                    bad_frames += 1;
                    let _ = send_error(&mut ws, "binary", "binary messages are not part of the protocol").await;
                }
                Some(Ok(Message::Close(frame))) => {
                    debug!(?frame, "agent closed the session");
                    break "closed by agent";
                }
                Some(Ok(_)) => shared.touch(), // ping/pong; tungstenite answers pings itself
                Some(Err(WsError::Capacity(e))) => {
                    warn!(error = %e, "agent message over the limit");
                    close_ws(&mut ws, close::MESSAGE_TOO_BIG, "message too big").await;
                    break "message too big";
                }
                Some(Err(e)) => {
                    debug!(error = %e, "session read failed");
                    break "connection lost";
                }
                None => break "connection lost",
            },
            frame = rx.recv() => {
                // `None`: the registry dropped this session (superseded or revoked); the
                // close request was sent just before, so honour it.
                let Some(frame) = frame else {
                    let (code, reason) = close_rx.borrow().clone().unwrap_or((close::NORMAL, "session ended by hub".to_owned()));
                    close_ws(&mut ws, code, &reason).await;
                    break if code == close::SUPERSEDED { "superseded" } else { "closed by hub" };
                };
                if let Err(e) = ws.send(Message::text(frame.to_json())).await {
                    debug!(error = %e, "session write failed");
                    break "connection lost";
                }
            }
            _ = ticker.tick() => {
                let silent_ms = clock::unix_ms() - shared.last_seen_ms.load(Ordering::Relaxed);
                if silent_ms > 3 * heartbeat.as_millis() as i64 {
                    ctx.metrics.hub_sessions_timed_out.fetch_add(1, Ordering::Relaxed);
                    close_ws(&mut ws, close::GOING_AWAY, "missed 3 heartbeats").await;
                    break "missed 3 heartbeats";
                }
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    break "connection lost";
                }
            }
            _ = super::stopped(&mut shutdown) => {
                let drain = HubFrame::Drain { reconnect_after_ms: ctx.config.drain_reconnect_after_ms };
                let _ = ws.send(Message::text(drain.to_json())).await;
                close_ws(&mut ws, close::GOING_AWAY, "hub shutting down").await;
                break "hub shutting down";
            }
        }
    };
    ctx.registry.detach(&agent_id, &session_id);
    ctx.events.disconnected(&agent_id, &session_id);
    ctx.audit.record(
        AuditEvent::new(kinds::AGENT_DISCONNECTED)
            .agent(agent_id.as_str())
            .details(serde_json::json!({"session_id": session_id, "reason": end})),
    );
    info!(session.id = %session_id, reason = end, "agent disconnected");
}

async fn send_error(ws: &mut HubSocket, code: &str, message: &str) -> Result<(), WsError> {
    let frame = HubFrame::Error(ErrorBody::new(code, message));
    ws.send(Message::text(frame.to_json())).await
}

/// Sends a close frame and waits briefly for the peer's answer so the reason arrives.
pub(super) async fn close_ws(ws: &mut HubSocket, code: u16, reason: &str) {
    // A close reason may be at most 123 bytes.
    let mut reason = reason.to_owned();
    while reason.len() > 123 {
        reason.pop();
    }
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}
