//! The outer loop: connect, run a session, wait, reconnect, until shutdown.
//!
//! ```text
//!  ┌──────────────► connect (TCP → TLS + pin → WebSocket upgrade)
//!  │                   │ error: log (pin mismatch: loudly, audited), backoff (≥ Retry-After)
//!  │                   ▼
//!  │                hello (nonce) ──► welcome (10 s) hub close 4004: wait the max backoff
//!  │                   │ welcome signed by a key in server_pins (mandatory through a front
//!  │                   │ door), else refused loudly; `challenge` answered if announced
//!  │                   │                            4001/4004: audited
//!  │                   ▼
//!  │                session: command/cancel/drain/error frames, 3×heartbeat silence limit,
//!  │                   │     certificate renewal when due
//!  │                   │ drain: wait reconnect_after_ms + jitter
//!  │                   │ renewed: reconnect at once with the new certificate
//!  │                   │ reload changed the advertisement: close 1000, reconnect at once
//!  │                   │ lasted ≥ healthy_after_secs: backoff reset
//!  └──── sleep ◄───────┘ (reload TLS material and signing key, finish an interrupted renewal)
//!  shutdown at any point: running commands get COMMAND_GRACE to finish (then are killed),
//!  their results are delivered if connected (else stored), Close(1001), audit flushed, Ok
//! ```
//!
//! The [`Executor`] and its result store belong to the dialer for the whole process: commands
//! keep running across reconnects and their results go to whichever session is live. So do
//! the audit log, the result [`Signer`] and the [`Renewal`] state.
//!
//! # Layout
//! - this module: [`run`], [`run_with_state`], the loop and one connection attempt.
//! - `report`: what each way of failing or ending means (logs, audit, state, next delay).

mod report;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::close::GOING_AWAY;
use agentmesh_protocol::{HelloFrame, VerbSpec, PROTOCOL_VERSION};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, info_span, warn, Instrument as _};

use crate::audit::AgentAudit;
use crate::backoff::Backoff;
use crate::commands::Commands;
use crate::config::{parse_backend_urls, BackendUrl, GatewayConfig};
use crate::connect::{self, connect_from};
use crate::exec::{ExecError, ExecSettings, Executor, COMMAND_GRACE};
use crate::health;
use crate::renew::{self, RenewSettings, Renewal};
use crate::session::{self, HandshakeProof};
use crate::signing::Signer;
use crate::state::AgentState;
use crate::tls::{self, HubTls, Route, TlsError};
use agentmesh_daemon::notify;

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
    /// The audit log could not be opened.
    #[error("audit.path: cannot open the audit log {path}: {source}")]
    Audit {
        /// The configured (or default) path.
        path: String,
        /// Why.
        source: agentmesh_audit::AuditError,
    },
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
    run_reloadable(config, state, shutdown, tokio::sync::mpsc::channel(1).1).await
}

/// [`run_with_state`], applying each config `reloads` yields (SIGHUP; see [`crate::reload`]).
pub async fn run_reloadable(
    config: GatewayConfig,
    state: Arc<AgentState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: tokio::sync::mpsc::Receiver<GatewayConfig>,
) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let trigger = tokio::spawn(async move {
        shutdown.await;
        notify::stopping();
        let _ = stop_tx.send(true);
    });
    let result = run_until(config, state, stop_rx, reloads).await;
    trigger.abort();
    result
}

async fn run_until(
    config: GatewayConfig,
    state: Arc<AgentState>,
    stop: watch::Receiver<bool>,
    reloads: tokio::sync::mpsc::Receiver<GatewayConfig>,
) -> Result<(), RunError> {
    let mut urls = parse_backend_urls(&config.outbound.backend_url).map_err(RunError::Url)?;
    // Several hubs (replicas): tried in a random order, so agents spread over them.
    urls.shuffle(&mut rand::rng());
    let url = urls[0].clone();
    finish_interrupted_renewal(&config);
    let hub_tls = tls::client_config(&config.outbound)?;
    let signer = Signer::load(&config.outbound);
    // Opening reads the whole audit file and every stored result: blocking, and done before
    // anything is served.
    let setup_config = config.clone();
    let setup_signer = signer.clone();
    let (audit, executor, results) = tokio::task::spawn_blocking(move || {
        let path = setup_config.audit_path();
        let audit =
            AgentAudit::open(&path, &setup_config.agent.id).map_err(|source| RunError::Audit {
                path: path.display().to_string(),
                source,
            })?;
        let mut settings = ExecSettings::from_config(&setup_config);
        settings.audit = Some(audit.clone());
        settings.signer = setup_signer;
        let (executor, results) = Executor::open_with(settings)?;
        Ok::<_, RunError>((audit, executor, results))
    })
    .await
    .map_err(|e| RunError::Exec(ExecError::Verb(format!("agent setup panicked: {e}"))))??;
    let commands = Commands::new(executor.clone(), results);
    let (published, config_rx) = watch::channel(Arc::new(config.clone()));
    let reloader = tokio::spawn(crate::reload::serve(reloads, executor.clone(), published));
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
    let renewal = Renewal::new(
        RenewSettings::from_config(&config),
        signer.clone(),
        Some(audit.clone()),
    );
    let parts = Parts {
        tls: hub_tls,
        commands,
        signer,
        audit: audit.clone(),
        renewal,
    };
    let watchdog = health::spawn_watchdog(state.clone(), url.url.clone(), stop.clone());
    let mut dialer = Dialer::new(config, url, state, parts);
    dialer.urls = urls;
    dialer.config_rx = config_rx;
    notify::ready();
    dialer.run(stop).instrument(span.clone()).await;
    reloader.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    // Disconnected at shutdown (or already drained by the session): results end up stored.
    executor.shutdown(COMMAND_GRACE).instrument(span).await;
    audit.flush().await;
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

/// Completes (or undoes) a certificate renewal a crash interrupted, before the key and
/// certificate are loaded.
fn finish_interrupted_renewal(config: &GatewayConfig) {
    if let Some(what) = renew::recover(&config.outbound.key, &config.outbound.cert) {
        warn!(outcome = %what, "found an interrupted certificate renewal");
    }
}

/// What the dialer owns besides the config.
struct Parts {
    tls: HubTls,
    commands: Commands,
    signer: Signer,
    audit: AgentAudit,
    renewal: Renewal,
}

struct Dialer {
    config: GatewayConfig,
    url: BackendUrl,
    /// Every hub URL, in the (shuffled) order they are tried; each attempt takes the next.
    urls: Vec<BackendUrl>,
    attempts: usize,
    state: Arc<AgentState>,
    tls: HubTls,
    verbs: Vec<VerbSpec>,
    commands: Commands,
    signer: Signer,
    audit: AgentAudit,
    renewal: Renewal,
    backoff: Backoff,
    rng: StdRng,
    /// The config in force, replaced by reloads (see [`crate::reload`]).
    config_rx: watch::Receiver<Arc<GatewayConfig>>,
}

impl Dialer {
    fn new(config: GatewayConfig, url: BackendUrl, state: Arc<AgentState>, parts: Parts) -> Self {
        let verbs = config.advertised_verbs();
        let config_rx = watch::channel(Arc::new(config.clone())).1;
        let out = &config.outbound;
        let backoff = Backoff::new(
            Duration::from_millis(out.reconnect_min_ms),
            Duration::from_millis(out.reconnect_max_ms),
        );
        Dialer {
            commands: parts.commands,
            tls: parts.tls,
            signer: parts.signer,
            audit: parts.audit,
            renewal: parts.renewal,
            verbs,
            backoff,
            urls: vec![url.clone()],
            attempts: 0,
            url,
            state,
            config,
            rng: StdRng::from_os_rng(),
            config_rx,
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut first = true;
        loop {
            if *stop.borrow() {
                return;
            }
            if self.config_rx.has_changed().unwrap_or(false) {
                let fresh = self.config_rx.borrow_and_update().clone();
                self.config = (*fresh).clone();
                self.verbs = self.config.advertised_verbs();
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
            self.state.set_next_attempt(delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = agentmesh_daemon::stopped(&mut stop) => return,
            }
        }
    }

    /// One connection attempt and, if it succeeds, its session. `None` means shutdown,
    /// otherwise the delay before the next attempt.
    async fn attempt(&mut self, stop: &mut watch::Receiver<bool>) -> Option<Duration> {
        let limit = self.config.outbound.max_message_bytes;
        if let Some(next) = self.urls.get(self.attempts % self.urls.len().max(1)) {
            self.url = next.clone();
        }
        self.attempts = self.attempts.wrapping_add(1);
        let connected = tokio::select! {
            r = connect_from(&self.url, &self.tls, limit, self.config.outbound.source_addr) => r,
            _ = agentmesh_daemon::stopped(stop) => return None,
        };
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(e) => return Some(self.after_connect_error(e)),
        };
        let hello = self.hello();
        let server_pins = &self.config.outbound.server_pins;
        let route = Route::of(connect::hub_pin(&ws).as_deref(), server_pins);
        let proof = HandshakeProof {
            server_pins,
            route,
            key: &self.tls.proof_key,
        };
        let handshake = tokio::select! {
            r = session::handshake(&mut ws, &hello, limit, WELCOME_TIMEOUT, &proof) => r,
            _ = agentmesh_daemon::stopped(stop) => {
                session::close(&mut ws, GOING_AWAY, "agent shutting down").await;
                return None;
            }
        };
        let welcome = match handshake {
            Ok(welcome) => welcome,
            Err(e) => return Some(self.after_handshake_error(e)),
        };
        // The key that signed `welcome` is the hub's (verified); else the TLS peer's (direct).
        let hub_pin = welcome
            .hub_key
            .as_deref()
            .and_then(agentmesh_protocol::proof::decode)
            .map(|spki| mesh_certs::pin_from_spki_der(&spki))
            .or_else(|| connect::hub_pin(&ws));
        self.state.set_connected(&welcome.session_id);
        self.audit.connected(
            &welcome.session_id,
            hub_pin.as_deref(),
            self.signer.pin().as_deref(),
        );
        info!(
            session_id = %welcome.session_id,
            route = ?route,
            hub_signed = welcome.signature.is_some(),
            heartbeat_secs = welcome.heartbeat_secs,
            verbs = self.verbs.len(),
            "connected to hub"
        );
        let started = Instant::now();
        let span = info_span!("session", session_id = %welcome.session_id);
        let serving = session::serve(
            &mut ws,
            &welcome,
            limit,
            &mut self.commands,
            &mut self.renewal,
            stop,
        )
        .instrument(span);
        // A reload that changes what `hello` said ends the session cleanly; the loop comes
        // straight back with a fresh `hello` (commands keep running meanwhile).
        let mut config_rx = self.config_rx.clone();
        let end = tokio::select! {
            end = serving => Some(end),
            _ = crate::reload::readvertise_needed(&mut config_rx, &hello) => None,
        };
        let Some(end) = end else {
            info!("advertisement changed: re-sending hello on a new session");
            let normal = agentmesh_protocol::close::NORMAL;
            session::close(&mut ws, normal, "re-advertising").await;
            self.audit
                .disconnected(&welcome.session_id, Some(normal), "re-advertising");
            self.commands.session_ended();
            self.state.set_disconnected(None);
            return Some(Duration::ZERO);
        };
        self.commands.session_ended();
        if started.elapsed() >= Duration::from_secs(self.config.outbound.healthy_after_secs) {
            self.backoff.reset();
        }
        self.after_session(&welcome.session_id, end)
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
            // Fresh per connection: a recorded welcome cannot be replayed to this one.
            nonce: session::proof::fresh_nonce(),
        }
    }

    fn reload_tls(&mut self) {
        // Certificates renewed on disk take effect at the next connection, no restart needed;
        // the signing key always follows the key the session authenticates with.
        finish_interrupted_renewal(&self.config);
        match tls::client_config(&self.config.outbound) {
            Ok(fresh) => {
                self.tls = fresh;
                if let Err(e) = self.signer.reload() {
                    warn!(error = %e, "cannot load the key for signing results; results go out unsigned");
                }
            }
            Err(e) => warn!(error = %e, "cannot reload the TLS material; keeping the previous one"),
        }
    }
}
