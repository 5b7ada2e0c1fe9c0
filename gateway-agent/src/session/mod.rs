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

use agentmesh_protocol::close::{GOING_AWAY, MESSAGE_TOO_BIG};
use agentmesh_protocol::{decode_hub_frame, AgentFrame, ErrorBody, HubFrame, WelcomeFrame};
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, error, info, warn};

use crate::commands::Commands;
use crate::exec::{Outgoing, COMMAND_GRACE};
use crate::renew::{RenewError, Renewal};

mod handshake;
pub mod proof;
mod wire;

pub use handshake::{handshake, HandshakeError, HandshakeProof};

pub use proof::{ProofError, ProofKey};
pub use wire::{close, describe};
use wire::{close_parts, finish_close, send};

/// Close code of a normal closure (after a renewal).
pub const NORMAL_CLOSURE: u16 = 1000;

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

/// Serves an established session until it ends: first the results held from earlier (see
/// [`crate::commands`]), then hub frames and results as they come, and certificate renewal
/// when it is due ([`crate::renew`]). On shutdown the session stays open while running
/// commands finish (up to [`COMMAND_GRACE`], then they are killed) so their results still
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
            _ = agentmesh_daemon::stopped(shutdown), if draining.is_none() => {
                let executor = commands.executor().clone();
                draining = Some(Box::pin(async move { executor.shutdown(COMMAND_GRACE).await }));
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
    mut result: Outgoing,
    out_limit: usize,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    commands.prepare(&mut result, out_limit);
    let id = result.frame.command_id.clone();
    send(ws, &AgentFrame::Result(result.frame)).await?;
    commands.delivered(&id);
    Ok(())
}

/// Sends stored results by id (each read back from the journal only when it is sent).
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

#[cfg(test)]
mod tests;
