//! The outer loop: connect, run a session, wait, reconnect, until shutdown.
//!
//! ```text
//!  ┌──────────────► connect (TCP → TLS + pin → WebSocket upgrade)
//!  │                   │ error: log (pin mismatch: loudly), backoff (≥ Retry-After)
//!  │                   ▼
//!  │                hello ──► welcome (10 s)       hub close 4004: wait the max backoff
//!  │                   │
//!  │                   ▼
//!  │                session: command/cancel/drain/error frames, 3×heartbeat silence limit
//!  │                   │ drain: wait reconnect_after_ms + jitter
//!  │                   │ lasted ≥ healthy_after_secs: backoff reset
//!  └──── sleep ◄───────┘
//!  shutdown at any point: running commands get SHUTDOWN_GRACE to finish (then are killed),
//!  their results are delivered if connected (else stored), Close(1001), return Ok
//! ```
//!
//! The [`Executor`] and its result store belong to the dialer for the whole process: commands
//! keep running across reconnects and their results go to whichever session is live.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::close::{GOING_AWAY, REVOKED, SUPERSEDED, UNAUTHORISED};
use agentmesh_protocol::{HelloFrame, VerbSpec, PROTOCOL_VERSION};
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, info_span, warn, Instrument as _};

use crate::backoff::Backoff;
use crate::commands::Commands;
use crate::config::{parse_backend_url, BackendUrl, GatewayConfig};
use crate::connect::{connect, ConnectError};
use crate::exec::{ExecError, Executor, SHUTDOWN_GRACE};
use crate::health;
use crate::session::{self, shutdown_signalled, HandshakeError, SessionEnd};
use crate::state::AgentState;
use crate::tls::{self, HubTls, TlsError};

/// Time the hub has to answer `hello` with `welcome`.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the health endpoint to finish its requests.
const HEALTH_GRACE: Duration = Duration::from_secs(5);

/// Why the agent could not run at all (connection failures are retried, never returned).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `outbound.backend_url` is unusable.
    #[error("outbound.backend_url: {0}")]
    Url(String),
    /// The TLS material could not be loaded.
    #[error("cannot set up TLS towards the hub: {0}")]
    Tls(#[from] TlsError),
    /// The command result store could not be opened.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The health endpoint could not bind.
    #[error("agent.health_listen: cannot listen on {addr}: {source}")]
    HealthBind {
        /// The configured address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with_state(config, AgentState::new(), shutdown).await
}

/// Runs the agent, reporting its connection state into `state`.
pub async fn run_with_state(
    config: GatewayConfig,
    state: Arc<AgentState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let trigger = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = run_until(config, state, stop_rx).await;
    trigger.abort();
    result
}

async fn run_until(
    config: GatewayConfig,
    state: Arc<AgentState>,
    stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let url = parse_backend_url(&config.outbound.backend_url).map_err(RunError::Url)?;
    let hub_tls = tls::client_config(&config.outbound)?;
    // Reads every stored result: blocking, and done before anything is served.
    let exec_config = config.clone();
    let (executor, results) = tokio::task::spawn_blocking(move || Executor::open(&exec_config))
        .await
        .map_err(|e| RunError::Exec(ExecError::Verb(format!("executor setup panicked: {e}"))))??;
    let commands = Commands::new(executor.clone(), results);
    let health = match config.agent.health_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::HealthBind { addr, source })?;
            info!(%addr, "health endpoint listening");
            let router = health::router(state.clone(), config.agent.id.clone());
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = health::serve(listener, router, stop).await {
                    error!(error = %e, "health endpoint failed");
                }
            }))
        }
        None => None,
    };
    let span = info_span!("agent", agent.id = %config.agent.id, hub = %url.url);
    let dialer = Dialer::new(config, url, state, hub_tls, commands);
    dialer.run(stop).instrument(span.clone()).await;
    // Disconnected at shutdown (or already drained by the session): results end up stored.
    executor.shutdown(SHUTDOWN_GRACE).instrument(span).await;
    if let Some(mut handle) = health {
        if tokio::time::timeout(HEALTH_GRACE, &mut handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
    Ok(())
}

struct Dialer {
    config: GatewayConfig,
    url: BackendUrl,
    state: Arc<AgentState>,
    tls: HubTls,
    verbs: Vec<VerbSpec>,
    commands: Commands,
    backoff: Backoff,
    rng: StdRng,
}

impl Dialer {
    fn new(
        config: GatewayConfig,
        url: BackendUrl,
        state: Arc<AgentState>,
        tls: HubTls,
        commands: Commands,
    ) -> Self {
        let verbs = config.advertised_verbs();
        let out = &config.outbound;
        let backoff = Backoff::new(
            Duration::from_millis(out.reconnect_min_ms),
            Duration::from_millis(out.reconnect_max_ms),
        );
        Dialer {
            commands,
            verbs,
            backoff,
            url,
            state,
            tls,
            config,
            rng: StdRng::from_entropy(),
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut first = true;
        loop {
            if *stop.borrow() {
                return;
            }
            if !first {
                self.reload_tls();
            }
            first = false;
            let Some(delay) = self.attempt(&mut stop).await else {
                self.state.set_disconnected(None);
                return;
            };
            info!(
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                attempt = self.backoff.attempt(),
                "reconnecting to the hub"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown_signalled(&mut stop) => return,
            }
        }
    }

    /// One connection attempt and, if it succeeds, its session. `None` means shutdown,
    /// otherwise the delay before the next attempt.
    async fn attempt(&mut self, stop: &mut watch::Receiver<bool>) -> Option<Duration> {
        let limit = self.config.outbound.max_message_bytes;
        let connected = tokio::select! {
            r = connect(&self.url, &self.tls, limit) => r,
            _ = shutdown_signalled(stop) => return None,
        };
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(e) => return Some(self.after_connect_error(e)),
        };
        let hello = self.hello();
        let handshake = tokio::select! {
            r = session::handshake(&mut ws, &hello, limit, WELCOME_TIMEOUT) => r,
            _ = shutdown_signalled(stop) => {
                session::close(&mut ws, GOING_AWAY, "agent shutting down").await;
                return None;
            }
        };
        let welcome = match handshake {
            Ok(welcome) => welcome,
            Err(e) => return Some(self.after_handshake_error(e)),
        };
        self.state.set_connected(&welcome.session_id);
        info!(
            session_id = %welcome.session_id,
            heartbeat_secs = welcome.heartbeat_secs,
            verbs = self.verbs.len(),
            "connected to hub"
        );
        let started = Instant::now();
        let span = info_span!("session", session_id = %welcome.session_id);
        let end = session::serve(&mut ws, &welcome, limit, &mut self.commands, stop)
            .instrument(span)
            .await;
        self.commands.session_ended();
        if started.elapsed() >= Duration::from_secs(self.config.outbound.healthy_after_secs) {
            self.backoff.reset();
        }
        self.after_session(end)
    }

    fn hello(&self) -> HelloFrame {
        let agent = &self.config.agent;
        HelloFrame {
            protocol: PROTOCOL_VERSION,
            agent_id: agent.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            site: agent.site.clone(),
            hostname: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            labels: agent.labels.clone(),
            verbs: self.verbs.clone(),
            max_concurrency: self.config.limits.max_concurrency,
            pending_results: self.commands.pending_results(),
        }
    }

    fn reload_tls(&mut self) {
        // Certificates renewed on disk take effect at the next connection, no restart needed.
        match tls::client_config(&self.config.outbound) {
            Ok(fresh) => self.tls = fresh,
            Err(e) => warn!(error = %e, "cannot reload the TLS material; keeping the previous one"),
        }
    }

    fn after_connect_error(&mut self, e: ConnectError) -> Duration {
        match &e {
            ConnectError::PinMismatch(m) => {
                self.state.record_pin_mismatch(&m.presented);
                error!(
                    presented_pin = %m.presented,
                    expected_pins = %m.expected.join(", "),
                    "refusing the hub: the pin it presented is not in outbound.server_pins \
                     (wrong hub certificate, or someone in the middle); fix server_pins or the \
                     hub certificate"
                );
            }
            _ => warn!(error = %e, "cannot reach the hub"),
        }
        self.state.set_disconnected(Some(e.to_string()));
        let delay = self.backoff.next_delay(&mut self.rng);
        match e {
            ConnectError::Http {
                retry_after: Some(hint),
                ..
            } => delay.max(self.backoff.cap(hint)),
            _ => delay,
        }
    }

    fn after_handshake_error(&mut self, e: HandshakeError) -> Duration {
        let code = match &e {
            HandshakeError::Closed { code, .. } => *code,
            _ => None,
        };
        match code {
            Some(REVOKED) => error!(error = %e, "the hub revoked this agent; retrying slowly"),
            Some(UNAUTHORISED) => error!(
                error = %e,
                "the hub refused this agent; is its pin enrolled and its certificate CN the agent id?"
            ),
            _ if matches!(e, HandshakeError::Protocol(_)) => {
                error!(error = %e, "protocol mismatch")
            }
            _ => warn!(error = %e, "session handshake failed"),
        }
        self.state.set_disconnected(Some(e.to_string()));
        self.delay_after_close(code)
    }

    fn after_session(&mut self, end: SessionEnd) -> Option<Duration> {
        let delay = match &end {
            SessionEnd::Shutdown => return None,
            SessionEnd::Drain(after) => {
                info!(
                    reconnect_after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                    "hub is draining"
                );
                self.backoff.reset();
                self.backoff.after_hint(*after, &mut self.rng)
            }
            SessionEnd::Closed { code, reason } => {
                let what = session::describe(*code);
                match *code {
                    Some(GOING_AWAY) => info!(code = %what, %reason, "hub closed the session"),
                    Some(SUPERSEDED) => warn!(
                        code = %what,
                        %reason,
                        "another connection with this agent's identity replaced this one"
                    ),
                    Some(REVOKED | UNAUTHORISED) => {
                        error!(code = %what, %reason, "hub closed the session")
                    }
                    _ => warn!(code = %what, %reason, "hub closed the session"),
                }
                self.delay_after_close(*code)
            }
            SessionEnd::Lost(reason) => {
                warn!(%reason, "lost the hub connection");
                self.backoff.next_delay(&mut self.rng)
            }
        };
        let message = match end {
            SessionEnd::Closed { code, reason } => {
                format!(
                    "hub closed the session ({}): {reason}",
                    session::describe(code)
                )
            }
            SessionEnd::Lost(reason) => reason,
            SessionEnd::Drain(_) | SessionEnd::Shutdown => "hub is draining".to_owned(),
        };
        self.state.set_disconnected(Some(message));
        Some(delay)
    }

    fn delay_after_close(&mut self, code: Option<u16>) -> Duration {
        delay_after_close(&mut self.backoff, &mut self.rng, code)
    }
}

/// A revoked agent keeps trying (revocation can be undone) but only at the max backoff.
fn delay_after_close(
    backoff: &mut Backoff,
    rng: &mut impl rand::Rng,
    code: Option<u16>,
) -> Duration {
    let delay = backoff.next_delay(rng);
    if code == Some(REVOKED) {
        backoff.max()
    } else {
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_waits_the_max_backoff_others_back_off_normally() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let revoked = delay_after_close(&mut backoff, &mut rng, Some(REVOKED));
        assert_eq!(revoked, Duration::from_secs(30));
        backoff.reset();
        let superseded = delay_after_close(&mut backoff, &mut rng, Some(SUPERSEDED));
        assert_eq!(superseded, Duration::from_millis(500));
    }
}
