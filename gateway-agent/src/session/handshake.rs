//! `hello` → `welcome` (its signature checked, see [`super::proof`]) → `challenge` answered.

use std::time::Duration;

use agentmesh_protocol::close::{PROTOCOL_ERROR, UNAUTHORISED};
use agentmesh_protocol::{
    decode_hub_frame, AgentFrame, ChallengeResponseFrame, ErrorBody, HelloFrame, HubFrame,
    WelcomeFrame, PROTOCOL_VERSION,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::warn;

use super::proof::{self, ProofError, ProofKey};
use super::wire::{close_parts, send};
use super::{close, describe};
use crate::tls::Route;

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
