//! One session over an established WebSocket: `hello` → `welcome` (signature checked,
//! `challenge` answered: module [`proof`]), then frames until the connection ends.
//!
//! Generic over the byte stream, so tests can run it over any transport. The session never
//! panics on hub input: a frame it cannot decode is answered with an `error` frame, a message
//! over the size limit closes with 1009, and silence longer than three heartbeats drops the
//! connection.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use agentmesh_protocol::close::{GOING_AWAY, MESSAGE_TOO_BIG, PROTOCOL_ERROR, UNAUTHORISED};
use agentmesh_protocol::{
    decode_hub_frame, AgentFrame, ChallengeResponseFrame, ErrorBody, HelloFrame, HubFrame,
    ResultFrame, WelcomeFrame, PROTOCOL_VERSION,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, error, info, warn};

use crate::commands::Commands;
use crate::exec::SHUTDOWN_GRACE;
use crate::renew::{RenewError, Renewal};
use crate::tls::Route;

pub mod proof;
mod wire;

pub use proof::{ProofError, ProofKey};
pub use wire::{close, describe};
use wire::{close_parts, finish_close, send};

/// Close code of a normal closure (after a renewal).
pub const NORMAL_CLOSURE: u16 = 1000;

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
    /// The hub did not prove it holds a pinned key.
    #[error("refusing the hub: {0}")]
    Proof(#[from] ProofError),
    /// The hub's challenge could not be signed.
    #[error("{0}")]
    Challenge(String),
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
    /// A renewed certificate was installed; we closed with 1000 to reconnect with it at once.
    Renewed {
        /// The new certificate's pin.
        pin: String,
    },
}

/// What [`handshake`] holds the hub to, and the key it answers a `challenge` with.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeProof<'a> {
    /// `outbound.server_pins`: the key that signs `welcome` must have one of these pins.
    pub server_pins: &'a [String],
    /// Where TLS ended; through a front door an unsigned `welcome` is refused.
    pub route: Route,
    /// The client certificate's key.
    pub key: &'a ProofKey,
}

/// Sends `hello` and waits up to `wait` for `welcome` (checked against `hello.nonce`, see
/// [`proof`]) and, when the hub announces one, answers its `challenge`.
pub async fn handshake<S>(
    ws: &mut WebSocketStream<S>,
    hello: &HelloFrame,
    limit: usize,
    wait: Duration,
    proof: &HandshakeProof<'_>,
) -> Result<WelcomeFrame, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(AgentFrame::Hello(hello.clone()).to_json()))
        .await?;
    let deadline = Instant::now() + wait;
    let welcome = match next_frame(ws, limit, deadline, wait).await? {
        HubFrame::Welcome(welcome) if welcome.protocol != PROTOCOL_VERSION => {
            let protocol = welcome.protocol;
            close(ws, PROTOCOL_ERROR, "unsupported protocol version").await;
            return Err(HandshakeError::Protocol(protocol));
        }
        HubFrame::Welcome(welcome) => welcome,
        other => {
            close(ws, PROTOCOL_ERROR, "expected welcome").await;
            return Err(HandshakeError::Unexpected(other.kind()));
        }
    };
    if let Some(nonce) = &hello.nonce {
        let checked = proof::check_welcome(
            &welcome,
            nonce,
            &hello.agent_id,
            proof.server_pins,
            proof.route,
        );
        if let Err(e) = checked {
            close(ws, UNAUTHORISED, "hub not proven").await;
            return Err(HandshakeError::Proof(e));
        }
    }
    if welcome.challenge_follows {
        let nonce = match next_frame(ws, limit, deadline, wait).await? {
            HubFrame::Challenge(c) => c.nonce,
            other => {
                close(ws, PROTOCOL_ERROR, "expected challenge").await;
                return Err(HandshakeError::Unexpected(other.kind()));
            }
        };
        let signature = proof
            .key
            .sign_challenge(&nonce, &hello.agent_id, &welcome.session_id)
            .map_err(HandshakeError::Challenge)?;
        let answer = AgentFrame::ChallengeResponse(ChallengeResponseFrame { signature });
        send(ws, &answer).await?;
    }
    Ok(welcome)
}

/// The next hub frame before `deadline`; `error` frames are logged and undecodable ones
/// answered, both skipped.
async fn next_frame<S>(
    ws: &mut WebSocketStream<S>,
    limit: usize,
    deadline: Instant,
    wait: Duration,
) -> Result<HubFrame, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = match timeout_at(deadline, ws.next()).await {
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
            Ok(HubFrame::Error(e)) => {
                warn!(code = %e.code, message = %e.message, "hub reported an error")
            }
            Ok(frame) => return Ok(frame),
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

/// Serves an established session until it ends: first the results held from earlier (see
/// [`crate::commands`]), then hub frames and results as they come, and certificate renewal
/// when it is due ([`crate::renew`]). On shutdown the session stays open while running
/// commands finish (up to [`SHUTDOWN_GRACE`], then they are killed) so their results still
/// reach the hub; new commands are refused meanwhile.
pub async fn serve<S>(
    ws: &mut WebSocketStream<S>,
    welcome: &WelcomeFrame,
    limit: usize,
    commands: &mut Commands,
    renewal: &mut Renewal,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let silence_limit = Duration::from_secs(welcome.heartbeat_secs.clamp(1, 3600) * 3);
    // The hub's own limit on what it accepts from us.
    let out_limit = match usize::try_from(welcome.max_message_bytes) {
        Ok(0) | Err(_) => agentmesh_protocol::DEFAULT_MAX_MESSAGE_BYTES,
        Ok(n) => n,
    };
    commands.executor().set_hub_limit(out_limit);
    renewal.session_started();
    let backlog = commands.backlog();
    if !backlog.frames.is_empty() || !backlog.ids.is_empty() {
        info!(
            results = backlog.frames.len() + backlog.ids.len(),
            "sending results held from earlier"
        );
    }
    for result in backlog.frames {
        if let Err(e) = deliver(ws, commands, result, out_limit).await {
            return SessionEnd::Lost(e.to_string());
        }
    }
    if let Err(e) = deliver_stored(ws, commands, backlog.ids, out_limit).await {
        return SessionEnd::Lost(e.to_string());
    }
    let mut deadline = Instant::now() + silence_limit;
    let mut draining: Option<Draining> = None;
    loop {
        let message = tokio::select! {
            _ = shutdown_signalled(shutdown), if draining.is_none() => {
                let executor = commands.executor().clone();
                draining = Some(Box::pin(async move { executor.shutdown(SHUTDOWN_GRACE).await }));
                continue;
            }
            _ = until_drained(&mut draining) => {
                // Every command has ended and its result is stored; send what is queued.
                while let Some(result) = commands.try_next_result() {
                    if deliver(ws, commands, result, out_limit).await.is_err() {
                        break;
                    }
                }
                close(ws, GOING_AWAY, "agent shutting down").await;
                return SessionEnd::Shutdown;
            }
            _ = renewal.wait(), if draining.is_none() => {
                if let Some(csr) = renewal.step().await {
                    if let Err(e) = send(ws, &AgentFrame::Renew { csr }).await {
                        return SessionEnd::Lost(e.to_string());
                    }
                }
                continue;
            }
            _ = sleep_until(deadline) => {
                close(ws, GOING_AWAY, "hub silent").await;
                return SessionEnd::Lost(format!("nothing received from the hub for {silence_limit:?}"));
            }
            result = commands.next_result() => {
                if let Err(e) = deliver(ws, commands, result, out_limit).await {
                    return SessionEnd::Lost(e.to_string());
                }
                if commands.take_overflow() {
                    let ids = commands.undelivered();
                    if let Err(e) = deliver_stored(ws, commands, ids, out_limit).await {
                        return SessionEnd::Lost(e.to_string());
                    }
                }
                continue;
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
        let sent = match decode_hub_frame(text.as_bytes(), limit) {
            Ok(HubFrame::Command(command)) => match commands.handle_command(command).await {
                Some(reply) => deliver(ws, commands, reply, out_limit).await,
                None => Ok(()),
            },
            Ok(HubFrame::Cancel { command_id }) => {
                commands.handle_cancel(&command_id);
                Ok(())
            }
            Ok(HubFrame::Drain { reconnect_after_ms }) => {
                close(ws, GOING_AWAY, "draining").await;
                return SessionEnd::Drain(Duration::from_millis(reconnect_after_ms));
            }
            Ok(HubFrame::Error(e)) => {
                warn!(code = %e.code, message = %e.message, "hub reported an error");
                renewal.on_error(&e);
                Ok(())
            }
            Ok(HubFrame::Welcome(_)) => {
                debug!("ignoring a repeated welcome");
                Ok(())
            }
            Ok(HubFrame::Challenge(_)) => {
                debug!("ignoring a challenge outside the handshake");
                Ok(())
            }
            Ok(HubFrame::Renewed {
                certificate,
                ca,
                pin,
            }) => match renewal.on_renewed(certificate, ca, pin).await {
                Ok(installed) => {
                    close(ws, NORMAL_CLOSURE, "certificate renewed").await;
                    return SessionEnd::Renewed { pin: installed.pin };
                }
                Err(RenewError::NotRequested) => {
                    debug!("ignoring a renewed certificate this agent did not ask for");
                    Ok(())
                }
                Err(e) => {
                    error!(error = %e, "certificate renewal failed; trying again in an hour");
                    Ok(())
                }
            },
            Err(e) => {
                warn!(error = %e, "undecodable frame from the hub");
                send(
                    ws,
                    &AgentFrame::Error(ErrorBody::new(e.code(), e.to_string())),
                )
                .await
            }
        };
        if let Err(e) = sent {
            return SessionEnd::Lost(e.to_string());
        }
    }
}

/// The executor's shutdown, run while the session keeps delivering.
type Draining = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn until_drained(draining: &mut Option<Draining>) {
    match draining {
        Some(d) => d.await,
        None => std::future::pending().await,
    }
}

/// Writes one result to the hub, then records it as delivered.
async fn deliver<S>(
    ws: &mut WebSocketStream<S>,
    commands: &Commands,
    mut result: ResultFrame,
    out_limit: usize,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    commands.prepare(&mut result, out_limit);
    let id = result.command_id.clone();
    send(ws, &AgentFrame::Result(result)).await?;
    commands.delivered(&id).await;
    Ok(())
}

/// Sends stored results by id (each read from disk only when it is sent).
async fn deliver_stored<S>(
    ws: &mut WebSocketStream<S>,
    commands: &Commands,
    ids: Vec<String>,
    out_limit: usize,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for id in ids {
        if let Some(result) = commands.stored(&id).await {
            deliver(ws, commands, result, out_limit).await?;
        }
    }
    Ok(())
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests;
