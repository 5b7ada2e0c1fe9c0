//! Writing frames and closing: the small WebSocket helpers the session and the dialer share.

use std::time::Duration;

use agentmesh_protocol::AgentFrame;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Writes one frame as a text message.
pub(super) async fn send<S>(
    ws: &mut WebSocketStream<S>,
    frame: &AgentFrame,
) -> Result<(), tungstenite::Error>
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
pub(super) async fn finish_close<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

pub(super) fn close_parts(frame: Option<&CloseFrame>) -> (Option<u16>, String) {
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
