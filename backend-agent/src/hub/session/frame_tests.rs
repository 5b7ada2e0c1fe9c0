//! Session handlers over `tokio::io::duplex` with paused time: bad frames (unknown type,
//! oversized), drain at shutdown, and backpressure from a slow result sink.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::{close, AgentFrame};
use futures_util::SinkExt;
use tokio::io::DuplexStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::super::{EventFuture, HubContext, SessionEvents};
use super::tests::{close_code, fixture, fixture_with, identity, next_text, start, AGENT};

/// Longer than any handler takes in paused time: "nothing arrived" within it means the
/// session is not answering.
const QUIET: Duration = Duration::from_secs(30);

/// A session whose hub side uses the production WebSocket limits (`ctx.ws_config()`).
async fn start_with_limits(
    ctx: &Arc<HubContext>,
) -> (WebSocketStream<DuplexStream>, tokio::task::JoinHandle<()>) {
    let (hub_io, agent_io) = tokio::io::duplex(64 * 1024);
    let hub_ws =
        WebSocketStream::from_raw_socket(hub_io, Role::Server, Some(ctx.ws_config())).await;
    let agent_ws =
        WebSocketStream::from_raw_socket(agent_io, Role::Client, Some(WebSocketConfig::default()))
            .await;
    let peer: SocketAddr = "192.0.2.9:4000".parse().unwrap();
    let task = tokio::spawn(super::run(
        ctx.clone(),
        hub_ws,
        identity(),
        super::tests::hello(),
        peer,
    ));
    (agent_ws, task)
}

#[tokio::test(start_paused = true)]
async fn an_unknown_frame_type_is_answered_and_the_session_stays() {
    let f = fixture();
    let (mut agent, _task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(next_text(&mut agent).await["type"], "welcome");
    for _ in 0..3 {
        agent
            .send(Message::text(r#"{"type":"teleport","to":"mars"}"#))
            .await
            .unwrap();
        let answer = next_text(&mut agent).await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "unknown_type", "{answer}");
    }
    assert!(
        f.ctx.registry.get(AGENT).unwrap().connected,
        "still attached"
    );
}

#[tokio::test(start_paused = true)]
async fn a_text_over_max_message_bytes_is_refused_by_the_decoder() {
    let f = fixture();
    // The agent side has no limit here, so the decoder is what refuses it.
    let (mut agent, _task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(next_text(&mut agent).await["type"], "welcome");
    let big = format!(
        r#"{{"type":"error","code":"x","message":"{}"}}"#,
        "y".repeat(f.ctx.config.max_message_bytes)
    );
    agent.send(Message::text(big)).await.unwrap();
    let answer = next_text(&mut agent).await;
    assert_eq!(answer["code"], "too_large", "{answer}");
    assert!(f.ctx.registry.get(AGENT).unwrap().connected);
}

#[tokio::test(start_paused = true)]
async fn a_message_over_the_websocket_limit_closes_1009() {
    let f = fixture();
    let (mut agent, task) = start_with_limits(&f.ctx).await;
    assert_eq!(next_text(&mut agent).await["type"], "welcome");
    let big = "z".repeat(f.ctx.config.max_message_bytes + 1);
    // The hub stops reading at the frame header, so the rest of this write may fail.
    let _ = agent.send(Message::text(big)).await;
    assert_eq!(close_code(&mut agent).await, close::MESSAGE_TOO_BIG);
    task.await.unwrap();
    assert!(!f.ctx.registry.get(AGENT).unwrap().connected);
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_drain_with_a_reconnect_slot_then_closes_1001() {
    let f = fixture();
    let (mut agent, task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(next_text(&mut agent).await["type"], "welcome");
    f.ctx.live.drain.begin(1);
    f.stop.send(true).unwrap();
    let drain = next_text(&mut agent).await;
    assert_eq!(drain["type"], "drain", "{drain}");
    assert!(drain["reconnect_after_ms"].as_u64().is_some(), "{drain}");
    assert_eq!(close_code(&mut agent).await, close::GOING_AWAY);
    task.await.unwrap();
    assert!(!f.ctx.registry.get(AGENT).unwrap().connected, "detached");
}

/// A sink that holds every result until a permit is added, as a full results queue would.
struct SlowResults(Arc<Semaphore>);

impl SessionEvents for SlowResults {
    fn frame<'a>(&'a self, _: &'a str, _: &'a [u8], frame: AgentFrame) -> EventFuture<'a> {
        Box::pin(async move {
            if matches!(frame, AgentFrame::Result(_)) {
                let _ = self.0.acquire().await.map(|p| p.forget());
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_result_waiting_for_room_stops_the_reads_of_that_session_only() {
    let gate = Arc::new(Semaphore::new(0));
    let f = fixture_with(Arc::new(SlowResults(gate.clone())));
    let (mut agent, _task) = start(&f.ctx, 64 * 1024).await;
    assert_eq!(next_text(&mut agent).await["type"], "welcome");
    let result = r#"{"type":"result","command_id":"c1","status":"ok"}"#;
    agent.send(Message::text(result)).await.unwrap();
    agent.send(Message::text("{not json")).await.unwrap();
    // The result is not dropped and the next frame is not read while it waits.
    let early = tokio::time::timeout(QUIET, next_text(&mut agent)).await;
    assert!(early.is_err(), "read on while a result waited: {early:?}");
    gate.add_permits(1);
    let answer = next_text(&mut agent).await;
    assert_eq!(answer["code"], "not_json", "{answer}");
    assert!(f.ctx.registry.get(AGENT).unwrap().connected);
}
