//! An established agent session: frames in, bounded queue out, heartbeats, supersede, drain.
//!
//! The session is generic over its byte stream (TLS in production, `tokio::io::duplex` in
//! the unit tests). Every write has a deadline ([`WRITE_DEADLINE`]): a peer that stops
//! reading is dropped (counted in `agentmesh_hub_sessions_write_timeout_total`) instead of
//! holding the task, its queue and its socket forever. The loop only selects; each event
//! has its own handler below.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::{close, decode_agent_frame, AgentFrame, ErrorBody, HelloFrame, HubFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

pub(super) use super::close::close_ws;
use super::identity::{PeerIdentity, Rejection};
use super::HubContext;
use crate::audit::events;
use crate::registry::{IdentityRejection, LiveSession, SessionShared};

/// Bad frames tolerated in one session before it is closed with 4002.
const MAX_BAD_FRAMES: u32 = 100;

/// Longest one write to the agent may take; past it the agent counts as gone.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// What ends a session; the text goes to the log and the `agent_disconnected` record.
type End = &'static str;

/// The write to the agent did not complete in time, or failed.
const WRITE_DEADLINE_EXCEEDED: End = "write deadline exceeded";
const CONNECTION_LOST: End = "connection lost";

/// Runs a session that passed every check until it ends, then forgets it.
pub(super) async fn run<S>(
    ctx: Arc<HubContext>,
    ws: WebSocketStream<S>,
    identity: PeerIdentity,
    hello: HelloFrame,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let agent_id = hello.agent_id.clone();
    let session_id = uuid::Uuid::now_v7().to_string();
    let (tx, rx) = mpsc::channel(ctx.config.send_queue);
    let (close_tx, close_rx) = watch::channel(None);
    let shared = Arc::new(SessionShared::default());
    shared.touch();
    let live = LiveSession {
        session_id: session_id.clone(),
        tx,
        close: Arc::new(close_tx),
        shared: shared.clone(),
    };
    let mut session = Session {
        ctx,
        ws,
        agent_id,
        session_id,
        identity,
        shared,
        bad_frames: 0,
        last_heard: tokio::time::Instant::now(),
    };
    let nonce = hello.nonce.as_deref();
    // A forwarded certificate must be proven held before the session is attached: an
    // unproven one never supersedes the real agent and is never dispatched to.
    let proxied = session.identity.via_proxy.is_some();
    if proxied {
        if let Err(end) = session.welcome(nonce, true).await {
            debug!(reason = end, "welcome could not be sent");
            return;
        }
        if let Err(r) = session.prove().await {
            super::handshake::refused(&session.ctx, peer, &r, Some(&session.identity));
            return close_ws(&mut session.ws, close::UNAUTHORISED, &r.detail).await;
        }
        debug!("forwarded certificate proven held");
    }
    // Attached before `welcome` (direct sessions): the identity is checked again under the
    // registry lock, so a revocation between the handshake and `hello` is final.
    let attached = session.ctx.registry.attach(
        hello.clone(),
        &session.identity.pin,
        &peer.to_string(),
        live,
    );
    let old = match attached {
        Ok(old) => old,
        Err(why) => return session.refuse(why, peer).await,
    };
    if let Some(old) = old {
        session
            .ctx
            .metrics
            .hub_sessions_superseded
            .fetch_add(1, Ordering::Relaxed);
        info!(old.session_id = %old.session_id, "superseding older session");
        old.request_close(close::SUPERSEDED, "superseded by a newer session");
    }
    if !proxied {
        if let Err(end) = session.welcome(nonce, false).await {
            // Never announced as connected, so only the registry needs to forget it.
            debug!(reason = end, "welcome could not be sent");
            session
                .ctx
                .registry
                .detach(&session.agent_id, &session.session_id);
            return;
        }
    }
    session.started(&hello, peer);
    // The registry keeps its own copy; this one would otherwise live as long as the session.
    drop(hello);
    let end = session.serve(rx, close_rx).await;
    session.finish(end);
}

struct Session<S> {
    ctx: Arc<HubContext>,
    ws: WebSocketStream<S>,
    agent_id: String,
    session_id: String,
    identity: PeerIdentity,
    shared: Arc<SessionShared>,
    bad_frames: u32,
    /// Last message from the agent on the runtime's clock (the heartbeat check), while
    /// `shared` keeps wall-clock time for the API.
    last_heard: tokio::time::Instant,
}

/// What a handler tells the loop.
enum Step {
    Continue,
    End(End),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// The identity check at attach failed: close without `welcome`, never listed.
    async fn refuse(mut self, why: IdentityRejection, peer: SocketAddr) {
        // Own reason codes: metrics and the audit tell this race apart from a refusal at
        // the handshake.
        let reason = match why {
            IdentityRejection::Revoked => "revoked_before_hello",
            IdentityRejection::Retired => "retired_before_hello",
            IdentityRejection::PinNotEnrolled => "unenrolled_before_hello",
        };
        let r = Rejection::new(
            reason,
            format!(
                "pin {} became {} before hello for agent {}",
                self.identity.pin,
                why.code().replace('_', " "),
                self.identity.cn
            ),
        );
        super::handshake::refused(&self.ctx, peer, &r, Some(&self.identity));
        let (code, reason) = super::handshake::close_for(why);
        close_ws(&mut self.ws, code, reason).await;
    }

    /// Sends `welcome`, signed over the agent's nonce when it sent one.
    async fn welcome(&mut self, nonce: Option<&str>, challenge_follows: bool) -> Result<(), End> {
        let welcome = super::proof::welcome(
            &self.ctx,
            nonce,
            (&self.agent_id, &self.session_id),
            challenge_follows,
        );
        self.send(Message::text(welcome.to_json())).await
    }

    /// The `challenge` of a forwarded certificate, answered within `hello_timeout_secs`.
    async fn prove(&mut self) -> Result<(), Rejection> {
        let limit = Duration::from_secs(self.ctx.config.hello_timeout_secs);
        super::proof::challenge(
            &mut self.ws,
            (&self.agent_id, &self.session_id),
            &self.identity.spki,
            self.ctx.config.max_message_bytes,
            limit,
        )
        .await
    }

    fn started(&self, hello: &HelloFrame, peer: SocketAddr) {
        let ctx = &self.ctx;
        ctx.metrics
            .hub_sessions_started
            .fetch_add(1, Ordering::Relaxed);
        info!(
            session.id = %self.session_id,
            cert.pin = %self.identity.pin,
            verbs = hello.verbs.len(),
            version = %hello.version,
            "agent connected"
        );
        ctx.events
            .connected(hello, &self.session_id, &self.identity.pin);
        ctx.audit.record(events::agent_connected(
            &self.agent_id,
            &self.session_id,
            &self.identity,
            peer,
            &hello.version,
        ));
    }

    /// The session loop: one `select!`, one handler per event.
    async fn serve(
        &mut self,
        mut rx: mpsc::Receiver<Box<HubFrame>>,
        mut close_rx: watch::Receiver<Option<(u16, String)>>,
    ) -> End {
        let heartbeat = Duration::from_secs(self.ctx.config.heartbeat_secs);
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            let step = tokio::select! {
                biased;
                _ = close_rx.changed() => {
                    let request = close_rx.borrow_and_update().clone();
                    Step::End(self.on_close_request(request).await)
                }
                msg = self.ws.next() => self.on_message(msg).await,
                frame = rx.recv() => match frame {
                    Some(frame) => self.on_outbound(frame).await,
                    // The registry dropped this session (superseded or revoked); the close
                    // request was sent just before, so honour it.
                    None => {
                        let request = close_rx.borrow().clone();
                        Step::End(self.on_close_request(request).await)
                    }
                },
                _ = ticker.tick() => self.on_tick(heartbeat).await,
                _ = agentmesh_daemon::stopped(&mut shutdown) => Step::End(self.on_shutdown().await),
            };
            if let Step::End(end) = step {
                return end;
            }
        }
    }

    /// The hub asked this session to close (supersede, revoke, stop).
    async fn on_close_request(&mut self, request: Option<(u16, String)>) -> End {
        let (code, reason) =
            request.unwrap_or_else(|| (close::NORMAL, "session ended by hub".to_owned()));
        close_ws(&mut self.ws, code, &reason).await;
        match code {
            close::SUPERSEDED => "superseded",
            close::REVOKED => "revoked",
            _ => "closed by hub",
        }
    }

    /// A message (or the end of the stream) from the agent.
    async fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Step {
        match msg {
            Some(Ok(Message::Text(text))) => {
                self.heard();
                let max = self.ctx.config.max_message_bytes;
                match decode_agent_frame(text.as_bytes(), max) {
                    Ok(AgentFrame::Hello(_)) => {
                        let step = self
                            .bad_frame("duplicate_hello", "hello is only valid as the first frame")
                            .await;
                        if let Step::End(end) = step {
                            return Step::End(end);
                        }
                    }
                    Ok(frame) => {
                        let ctx = self.ctx.clone();
                        ctx.events
                            .frame(&self.agent_id, &self.identity.spki, frame)
                            .await;
                    }
                    Err(e) => {
                        warn!(error = %e, "bad frame from agent");
                        if let Step::End(end) = self.bad_frame(e.code(), &e.to_string()).await {
                            return Step::End(end);
                        }
                    }
                }
                if self.bad_frames > MAX_BAD_FRAMES {
                    close_ws(&mut self.ws, close::PROTOCOL_ERROR, "too many bad frames").await;
                    return Step::End("too many bad frames");
                }
                Step::Continue
            }
            Some(Ok(Message::Binary(_))) => {
                self.heard();
                self.bad_frame("binary", "binary messages are not part of the protocol")
                    .await
            }
            Some(Ok(Message::Close(frame))) => {
                debug!(?frame, "agent closed the session");
                Step::End("closed by agent")
            }
            // Ping/pong: tungstenite answers pings itself.
            Some(Ok(_)) => {
                self.heard();
                Step::Continue
            }
            Some(Err(WsError::Capacity(e))) => {
                warn!(error = %e, "agent message over the limit");
                close_ws(&mut self.ws, close::MESSAGE_TOO_BIG, "message too big").await;
                Step::End("message too big")
            }
            Some(Err(e)) => {
                debug!(error = %e, "session read failed");
                Step::End(CONNECTION_LOST)
            }
            None => Step::End(CONNECTION_LOST),
        }
    }

    /// The agent said something (any message counts as alive).
    fn heard(&mut self) {
        self.shared.touch();
        self.last_heard = tokio::time::Instant::now();
    }

    /// Counts a bad frame and tells the agent why.
    async fn bad_frame(&mut self, code: &str, message: &str) -> Step {
        self.bad_frames += 1;
        let frame = HubFrame::Error(ErrorBody::new(code, message));
        match self.send(Message::text(frame.to_json())).await {
            Ok(()) => Step::Continue,
            Err(end) => Step::End(end),
        }
    }

    /// A frame from the outbound queue (commands, answers).
    async fn on_outbound(&mut self, frame: Box<HubFrame>) -> Step {
        match self.send(Message::text(frame.to_json())).await {
            Ok(()) => Step::Continue,
            Err(end) => Step::End(end),
        }
    }

    /// Heartbeat: drop a silent agent, ping a live one.
    async fn on_tick(&mut self, heartbeat: Duration) -> Step {
        if self.last_heard.elapsed() > 3 * heartbeat {
            self.ctx
                .metrics
                .hub_sessions_timed_out
                .fetch_add(1, Ordering::Relaxed);
            close_ws(&mut self.ws, close::GOING_AWAY, "missed 3 heartbeats").await;
            return Step::End("missed 3 heartbeats");
        }
        match self.send(Message::Ping(Default::default())).await {
            Ok(()) => Step::Continue,
            Err(end) => Step::End(end),
        }
    }

    /// The hub is stopping: `drain`, then close 1001.
    async fn on_shutdown(&mut self) -> End {
        let drain = HubFrame::Drain {
            reconnect_after_ms: self.ctx.live.drain.next_slot(),
        };
        if self.send(Message::text(drain.to_json())).await.is_ok() {
            close_ws(&mut self.ws, close::GOING_AWAY, "hub shutting down").await;
        }
        "hub shutting down"
    }

    /// One write, bounded by [`WRITE_DEADLINE`].
    async fn send(&mut self, msg: Message) -> Result<(), End> {
        match tokio::time::timeout(WRITE_DEADLINE, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                debug!(error = %e, "session write failed");
                Err(CONNECTION_LOST)
            }
            Err(_) => {
                self.ctx
                    .metrics
                    .hub_sessions_write_timeout
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    deadline_secs = WRITE_DEADLINE.as_secs(),
                    "agent stopped reading: dropping the session"
                );
                Err(WRITE_DEADLINE_EXCEEDED)
            }
        }
    }

    /// Detaches, tells the event sink and writes `agent_disconnected`. The socket is
    /// dropped with `self`.
    fn finish(self, end: End) {
        let ctx = &self.ctx;
        ctx.registry.detach(&self.agent_id, &self.session_id);
        ctx.metrics.session_closed(end);
        ctx.events.disconnected(&self.agent_id, &self.session_id);
        ctx.audit.record(events::agent_disconnected(
            &self.agent_id,
            &self.session_id,
            end,
        ));
        info!(session.id = %self.session_id, reason = end, "agent disconnected");
    }
}

#[cfg(test)]
mod frame_tests;
#[cfg(test)]
mod tests;
