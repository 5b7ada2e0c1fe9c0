//! agentmesh control plane: the mTLS WebSocket hub that gateway agents dial into and the
//! operator HTTP API.
//!
//! `main.rs` only parses arguments, loads the config and calls [`run`] (or the `token`,
//! `audit`, `backup` subcommands); everything else lives here so tests run the real thing in-process
//! on ephemeral ports.
//!
//! # Layout
//! - [`config`]: `backend.toml` parsing, defaults, env overrides, validation.
//! - [`hub`]: accept loop, TLS, identity checks, `hello`, sessions (see its lifecycle picture).
//! - [`registry`]: enrolments and live sessions.
//! - [`api`]: the operator HTTP API (axum), its errors and bearer-token extractor.
//! - [`commands`]: command dispatch, results, waiters, fan-out jobs.
//! - [`audit`]: the audit trail (hash-chained, group-committed).
//! - [`audit_flood`]: unauthenticated failures, aggregated per source before the audit trail.
//! - [`checkpoint`]: signed checkpoints of the audit tail in the store.
//! - [`auth`]: token roles, hashed lookup, token minting.
//! - [`authz`]: the one authorisation policy (who may do what to which agent or command).
//! - [`backup`]: `backup` / `restore` of the store, audit log and config.
//! - [`limits`]: rate limits (operator, agent, hub source address and identity, admission).
//! - [`client_addr`]: the real client behind a trusted proxy (`X-Real-IP`, CIDRs).
//! - [`metrics`]: counters rendered for Prometheus.
//! - [`notify`]: systemd watchdog and status.
//! - [`enrol`]: enrolment, join tokens, renewal, revocation.
//! - [`events`]: routes session events to commands and enrolment; the operator event
//!   stream (`GET /api/v1/events`).
//! - [`ui`]: the fleet page at `/ui/` (embedded static files).
//! - [`labels`]: authoritative agent labels (config, admin API, store).
//! - [`reload`]: SIGHUP: the config swapped in under live sessions, or refused and kept;
//!   [`run`] / [`run_reloadable`] (module `daemon`) wire it to the signals.
//! - [`store`]: the embedded store (SQLite behind a small trait).
//! - [`cluster`]: `[cluster]` routing between replicas over NATS (`docs/cluster.md`).
//! - [`clock`]: RFC 3339 timestamps and Unix milliseconds.
//! - [`hex`], [`sync`]: lower-case hex; poison-tolerant locking.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod audit_flood;
pub mod audit_mirror;
pub mod auth;
pub mod authz;
pub mod backup;
pub mod checkpoint;
pub mod client_addr;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod enrol;
pub mod events;
pub mod hex;
pub mod hub;
pub mod labels;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod periodic;
pub mod registry;
pub mod reload;
pub mod store;
pub mod sync;
pub mod ui;

mod daemon;
pub use daemon::{run, run_reloadable};
pub use reload::ReloadSource;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::BackendConfig;
use crate::hub::{HubContext, TaskCounter};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// How long shutdown waits for sessions to drain and requests to finish.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Why the backend could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The audit log could not be opened.
    #[error("audit log: {0}")]
    Audit(#[from] agentmesh_audit::AuditError),
    /// Enrolments could not be loaded (or `[ca]` is unusable).
    #[error("enrolment: {0}")]
    Enrol(#[from] enrol::EnrolError),
    /// The embedded store could not be opened.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// The hub's TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] hub::tls::TlsSetupError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    /// `[cluster]` is unusable.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// Audit checkpoints cannot be signed.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
}

/// The two bound listeners the backend serves on.
#[derive(Debug)]
pub struct Listeners {
    /// Operator API.
    pub http: TcpListener,
    /// Agent hub.
    pub hub: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `[http].listen` and `[hub].listen`.
    pub async fn bind(config: &BackendConfig) -> Result<Self, RunError> {
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { what, addr, source })
        };
        Ok(Listeners {
            http: bind("http.listen", config.http.listen).await?,
            hub: bind("hub.listen", config.hub.listen).await?,
        })
    }
}

/// A running backend: handles for tests and for the `dev` quick start (crate `agentmesh-dev`).
pub struct Backend {
    /// Agents and sessions.
    pub registry: Arc<Registry>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Commands and jobs.
    pub commands: Arc<commands::CommandService>,
    /// Enrolment, renewal, revocation.
    pub enrolment: Arc<enrol::Enrolment>,
    /// Audit trail.
    pub audit: Arc<audit::Audit>,
    /// Unauthenticated failures, aggregated per source.
    pub failures: Arc<audit_flood::FailureAudit>,
    /// Bound API address.
    pub http_addr: SocketAddr,
    /// Bound hub address.
    pub hub_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: TaskCounter,
    hub_task: JoinHandle<()>,
    http_task: JoinHandle<std::io::Result<()>>,
    checkpoints: checkpoint::Checkpoints,
    audit_mirror: Option<audit_mirror::AuditMirror>,
    reloader: Arc<reload::Reloader>,
    live: Arc<hub::LiveSettings>,
}

impl Backend {
    /// Starts the hub and the API on already-bound listeners.
    pub async fn start(listeners: Listeners, config: BackendConfig) -> Result<Self, RunError> {
        Self::start_reloadable(listeners, config, ReloadSource::default()).await
    }

    /// Like [`Backend::start`], reloadable from `source` ([`Backend::reload`]).
    pub async fn start_reloadable(
        listeners: Listeners,
        config: BackendConfig,
        source: ReloadSource,
    ) -> Result<Self, RunError> {
        let (server_tls, client_verifier, server_cert) = hub::tls::reloadable_server_config(
            &config.hub.cert,
            &config.hub.key,
            &config.hub.client_ca,
        )?;
        let registry = Arc::new(Registry::default());
        let metrics = Arc::new(Metrics::default());
        let (stop, stop_rx) = watch::channel(false);
        let tasks = TaskCounter::default();
        let http_addr = listeners.http.local_addr().map_err(RunError::Http)?;
        let hub_addr = listeners.hub.local_addr().map_err(RunError::Http)?;

        let (audit, _report) = audit::Audit::open(&config.audit)?;
        let audit = Arc::new(audit);
        let failures = Arc::new(audit_flood::FailureAudit::new(audit.clone()));
        failures.clone().spawn_flusher(stop_rx.clone());
        let limits = Arc::new(reload::Swap::new(limits::RateLimits::new(&config.limits)));
        let live = Arc::new(hub::LiveSettings::new(&config.hub, &config.limits));
        daemon::spawn_prune(limits.clone(), stop_rx.clone());
        let store = store::Store::open(&config.store).await?;
        let signer = checkpoint::load_signer(&config.hub.key)?;
        let replica = checkpoint::replica_of(&config);
        checkpoint::check_tail(&store, &audit, &replica).await;
        // `[cluster]` on PostgreSQL: this replica's records are copied for the fleet's reads.
        let audit_mirror = (config.cluster.is_some() && store.mirrors_audit()).then(|| {
            audit_mirror::AuditMirror::start(store.clone(), audit.clone(), replica.clone())
        });
        let checkpoints =
            checkpoint::Checkpoints::start(signer, store.clone(), audit.clone(), replica);
        let authz = Arc::new(authz::Authz::new(audit.clone()));
        let commands = commands::CommandService::start(
            registry.clone(),
            store.clone(),
            metrics.clone(),
            limits.clone(),
            audit.clone(),
            authz.clone(),
            commands::Settings::from_config(&config.limits, &config.store),
            stop_rx.clone(),
        );
        commands.recover_as(config.cluster.is_some()).await?;
        if let Some(c) = &config.cluster {
            let cluster = cluster::Cluster::start(c, registry.clone(), stop_rx.clone()).await?;
            commands.set_cluster(cluster);
        }
        let hub_pins = hub::tls::load_certs(&config.hub.cert)?
            .first()
            .and_then(|c| mesh_certs::pin_from_cert_der(c.as_ref()).ok())
            .into_iter()
            .collect();
        let enrolment = Arc::new(
            enrol::Enrolment::start(
                registry.clone(),
                store.clone(),
                &config.ca,
                &config.agents,
                hub_pins,
                config.limits.renewals_per_agent_per_hour,
                audit.clone(),
            )
            .await?,
        );
        // Authoritative labels are in place before the hub accepts its first hello.
        let labels = Arc::new(
            labels::AgentLabels::load(
                registry.clone(),
                store.clone(),
                audit.clone(),
                authz.clone(),
                &config.agents,
            )
            .await?,
        );
        // Identity changes reach the other replicas, and theirs reach this one, from here on.
        if let Some(cluster) = commands.cluster() {
            cluster.bind_identity(store.clone());
        }
        let events = Arc::new(events::BackendEvents {
            registry: registry.clone(),
            commands: commands.clone(),
            enrolment: enrolment.clone(),
            metrics: metrics.clone(),
            failures: failures.clone(),
            renewals: Arc::new(tokio::sync::Semaphore::new(events::MAX_CONCURRENT_RENEWALS)),
            tasks: tasks.clone(),
        });
        let hub_key = Arc::new(hub::proof::HubKey::load(&config.hub.cert, &config.hub.key)?);
        let hub_ctx = Arc::new(HubContext {
            config: config.hub.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            acceptor: tokio_rustls::TlsAcceptor::from(server_tls),
            client_verifier,
            events,
            shutdown: stop_rx.clone(),
            tasks: tasks.clone(),
            limits: limits.clone(),
            audit: audit.clone(),
            failures: failures.clone(),
            live: live.clone(),
            hub_key: hub_key.clone(),
        });
        let hub_listening = Arc::new(AtomicBool::new(true));
        // `/ready` reports a hub whose accept loop ended (shutdown, or a task that died).
        let hub_flag = hub_listening.clone();
        let hub_task = tokio::spawn(async move {
            let _listening = hub::ListeningGuard(hub_flag);
            hub::serve(listeners.hub, hub_ctx).await;
        });

        let tokens = Arc::new(auth::TokenStore::new(&config.tokens));
        let http_trusted_proxies = Arc::new(reload::Swap::new(config.http.trusted_proxies.clone()));
        let reloader = Arc::new(reload::Reloader {
            http_trusted_proxies: http_trusted_proxies.clone(),
            path: source.path,
            tokens: tokens.clone(),
            limits: limits.clone(),
            live: live.clone(),
            cert: server_cert,
            hub_key: hub_key.clone(),
            enrolment: enrolment.clone(),
            labels: labels.clone(),
            audit: audit.clone(),
            log: source.log,
            current: tokio::sync::Mutex::new(config.clone()),
        });
        let state = api::AppState {
            registry: registry.clone(),
            tokens: tokens.clone(),
            metrics: metrics.clone(),
            hub_listening: hub_listening.clone(),
            started: Instant::now(),
            commands: commands.clone(),
            authz,
            labels: labels.clone(),
            limits: limits.clone(),
            enrolment: enrolment.clone(),
            audit: audit.clone(),
            failures: failures.clone(),
            trusted_proxies: http_trusted_proxies,
            live: live.clone(),
        };
        let app = api::router(state, config.http.max_body_bytes);
        let mut http_stop = stop_rx;
        let http = axum::serve(
            listeners.http,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            agentmesh_daemon::stopped(&mut http_stop).await;
        });
        let http_task = tokio::spawn(async move { http.await });
        info!(http = %http_addr, hub = %hub_addr, "backend started");
        hub_listening.store(true, Ordering::Relaxed);
        Ok(Backend {
            registry,
            metrics,
            commands,
            enrolment,
            audit,
            failures,
            http_addr,
            hub_addr,
            stop,
            tasks,
            hub_task,
            http_task,
            checkpoints,
            audit_mirror,
            reloader,
            live,
        })
    }

    /// Reloads the config file (SIGHUP); on any error the running config stays.
    pub async fn reload(&self) -> Result<reload::ReloadReport, reload::ReloadError> {
        self.reloader.reload_from_file().await
    }

    /// Settings a reload changes under live sessions, the drain plan and the draining flag.
    pub fn live(&self) -> Arc<hub::LiveSettings> {
        self.live.clone()
    }

    /// The reloader, for a signal handler that outlives borrows of the backend.
    pub fn reloader(&self) -> Arc<reload::Reloader> {
        self.reloader.clone()
    }

    /// Gives commands in flight `[hub] drain_grace_secs` to report, then stops accepting,
    /// drains sessions (`drain` with a reconnect slot each + close 1001, see [`hub::drain`])
    /// and waits, bounded by [`DRAIN_GRACE`].
    pub async fn shutdown(self) -> Result<(), RunError> {
        info!("backend shutting down");
        self.live.begin_draining();
        hub::drain::await_in_flight(&self.commands, &self.registry, self.live.drain_grace()).await;
        // Counted after the grace: sessions that attached meanwhile get a slot of their own.
        let draining = self.registry.connected_count();
        self.live.drain.begin(draining);
        info!(
            sessions = draining,
            window_ms = self.live.drain.window_ms(),
            "draining: reconnect slots spread over the window"
        );
        let _ = self.stop.send(true);
        // Open event streams would hold the HTTP server's graceful stop.
        self.registry.events.close();
        let _ = self.hub_task.await;
        if tokio::time::timeout(DRAIN_GRACE, self.tasks.wait_idle())
            .await
            .is_err()
        {
            warn!(
                sessions = self.tasks.count(),
                "sessions still open after the grace period"
            );
        }
        self.failures.flush();
        self.audit.flush().await;
        let result = match tokio::time::timeout(DRAIN_GRACE, self.http_task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(RunError::Http(e)),
            Ok(Err(join)) => Err(RunError::Http(std::io::Error::other(join))),
            Err(_) => {
                warn!("HTTP requests still running after the grace period");
                Ok(())
            }
        };
        // The last records of this process (HTTP drain included), then their checkpoint.
        self.audit.flush().await;
        self.checkpoints.finish().await;
        if let Some(mirror) = self.audit_mirror {
            mirror.finish().await;
        }
        result
    }

    /// Stops at once without draining, as a crash would (for tests).
    pub fn abort(self) {
        self.hub_task.abort();
        self.http_task.abort();
        // Sessions end without `drain`, as they would if the process died.
        for session in self.registry.live_sessions() {
            session.request_close(agentmesh_protocol::close::GOING_AWAY, "backend stopped");
        }
    }
}
