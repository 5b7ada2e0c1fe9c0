//! One session over an established WebSocket: `hello` → `welcome`, then frames until the
//! connection ends.
//!
//! Generic over the byte stream, so tests can run it over any transport. The session never
//! panics on hub input: a frame it cannot decode is answered with an `error` frame, a message
//! over the size limit closes with 1009, and silence longer than three heartbeats drops the
//! connection.

use std::time::Duration;

use agentmesh_protocol::close::{GOING_AWAY, MESSAGE_TOO_BIG, PROTOCOL_ERROR};
use agentmesh_protocol::{
    decode_hub_frame, AgentFrame, ErrorBody, HelloFrame, HubFrame, WelcomeFrame, PROTOCOL_VERSION,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use crate::commands::Commands;

/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why the `hello`/`welcome` exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// No `welcome` within the handshake timeout.
    #[error("no welcome from the hub within {0:?}")]
    Timeout(Duration),
    /// The hub closed the connection instead of welcoming us.
    #[error("hub closed the session ({}): {reason}", describe(*code))]
    Closed {
        /// The close code, if the hub sent one.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// The hub speaks another protocol version.
    #[error(
        "hub speaks protocol {0}, this agent speaks {PROTOCOL_VERSION}; upgrade the older side"
    )]
    Protocol(u32),
    /// The hub sent something other than `welcome` first.
    #[error("hub sent {0} before welcome")]
    Unexpected(&'static str),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Our shutdown signal fired; we closed with 1001.
    Shutdown,
    /// The hub asked us to come back after this long.
    Drain(Duration),
    /// The hub closed the connection.
    Closed {
        /// The close code, if the hub sent one.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// The connection broke or went silent.
    Lost(String),
}

/// Sends `hello` and waits up to `wait` for `welcome`.
pub async fn handshake<S>(
    ws: &mut WebSocketStream<S>,
    hello: &HelloFrame,
    limit: usize,
    wait: Duration,
) -> Result<WelcomeFrame, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(AgentFrame::Hello(hello.clone()).to_json()))
        .await?;
    let deadline = Instant::now() + wait;
    loop {
        let message = match timeout(deadline - Instant::now(), ws.next()).await {
            Err(_) => return Err(HandshakeError::Timeout(wait)),
            Ok(None) => return Err(tungstenite::Error::ConnectionClosed.into()),
            Ok(Some(message)) => message?,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let (code, reason) = close_parts(frame.as_ref());
                return Err(HandshakeError::Closed { code, reason });
            }
            _ => continue,
        };
        match decode_hub_frame(text.as_bytes(), limit) {
            Ok(HubFrame::Welcome(welcome)) if welcome.protocol != PROTOCOL_VERSION => {
                let protocol = welcome.protocol;
                close(ws, PROTOCOL_ERROR, "unsupported protocol version").await;
                return Err(HandshakeError::Protocol(protocol));
            }
            Ok(HubFrame::Welcome(welcome)) => return Ok(welcome),
            Ok(HubFrame::Error(e)) => {
                warn!(code = %e.code, message = %e.message, "hub reported an error")
            }
            Ok(other) => {
                close(ws, PROTOCOL_ERROR, "expected welcome").await;
                return Err(HandshakeError::Unexpected(other.kind()));
            }
            Err(e) => {
                warn!(error = %e, "undecodable frame from the hub before welcome");
                send(
                    ws,
                    &AgentFrame::Error(ErrorBody::new(e.code(), e.to_string())),
                )
                .await?;
            }
        }
    }
}

/// Serves an established session until it ends.
pub async fn serve<S>(
    ws: &mut WebSocketStream<S>,
    welcome: &WelcomeFrame,
    limit: usize,
    commands: &mut Commands,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let silence_limit = Duration::from_secs(welcome.heartbeat_secs.clamp(1, 3600) * 3);
    let mut deadline = Instant::now() + silence_limit;
    loop {
        let message = tokio::select! {
            _ = shutdown_signalled(shutdown) => {
                close(ws, GOING_AWAY, "agent shutting down").await;
                return SessionEnd::Shutdown;
            }
            _ = sleep_until(deadline) => {
                close(ws, GOING_AWAY, "hub silent").await;
                return SessionEnd::Lost(format!("nothing received from the hub for {silence_limit:?}"));
            }
            message = ws.next() => message,
        };
        deadline = Instant::now() + silence_limit;
        let text = match message {
            None => return SessionEnd::Lost("connection closed without a close frame".into()),
            Some(Err(tungstenite::Error::Capacity(e))) => {
                close(ws, MESSAGE_TOO_BIG, "message too big").await;
                return SessionEnd::Lost(format!("hub sent an oversized message: {e}"));
            }
            Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = close_parts(frame.as_ref());
                finish_close(ws).await;
                return SessionEnd::Closed { code, reason };
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                let error = ErrorBody::new("binary_not_supported", "frames are JSON text messages");
                if let Err(e) = send(ws, &AgentFrame::Error(error)).await {
                    return SessionEnd::Lost(e.to_string());
                }
                continue;
            }
            // Pings are answered by tungstenite; they only refresh the deadline.
            Some(Ok(_)) => continue,
        };
        let reply = match decode_hub_frame(text.as_bytes(), limit) {
            Ok(HubFrame::Command(command)) => {
                Some(AgentFrame::Result(commands.handle_command(&command)))
            }
            Ok(HubFrame::Cancel { command_id }) => {
                commands.handle_cancel(&command_id);
                None
            }
            Ok(HubFrame::Drain { reconnect_after_ms }) => {
                close(ws, GOING_AWAY, "draining").await;
                return SessionEnd::Drain(Duration::from_millis(reconnect_after_ms));
            }
            Ok(HubFrame::Error(e)) => {
                warn!(code = %e.code, message = %e.message, "hub reported an error");
                None
            }
            Ok(HubFrame::Welcome(_)) => {
                debug!("ignoring a repeated welcome");
                None
            }
            Err(e) => {
                warn!(error = %e, "undecodable frame from the hub");
                Some(AgentFrame::Error(ErrorBody::new(e.code(), e.to_string())))
            }
        };
        if let Some(frame) = reply {
            if let Err(e) = send(ws, &frame).await {
                return SessionEnd::Lost(e.to_string());
            }
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn send<S>(ws: &mut WebSocketStream<S>, frame: &AgentFrame) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(frame.to_json())).await
}

/// Sends a close frame and waits (briefly) for the hub's answer.
pub async fn close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    if ws.close(Some(frame)).await.is_ok() {
        finish_close(ws).await;
    }
}

/// Drives the stream until the closing handshake completes, for at most [`CLOSE_GRACE`].
async fn finish_close<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn close_parts(frame: Option<&CloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
        None => (None, String::new()),
    }
}

/// `"4004 revoked"`-style text for a close code.
pub fn describe(code: Option<u16>) -> String {
    match code {
        Some(c) => format!("{c} {}", agentmesh_protocol::close::describe(c)),
        None => "no code".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agentmesh_protocol::CommandStatus;
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

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
        }
    }

    /// Runs `serve` in a task; returns its handle and the shutdown switch.
    fn spawn_serve(
        mut agent: WebSocketStream<DuplexStream>,
        heartbeat_secs: u64,
    ) -> (tokio::task::JoinHandle<SessionEnd>, watch::Sender<bool>) {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut commands = Commands::new(&crate::config::builtin_verbs());
            serve(
                &mut agent,
                &welcome(heartbeat_secs),
                LIMIT,
                &mut commands,
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
        };
        let err = handshake(&mut agent, &hello, LIMIT, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Protocol(2)), "{err}");
        assert!(err.to_string().contains("upgrade"), "{err}");
        assert_eq!(hub_side.await.unwrap(), Some(PROTOCOL_ERROR));
    }
}
