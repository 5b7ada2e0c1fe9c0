//! The mTLS WebSocket hub that gateway agents dial into.
//!
//! ```text
//!  TCP accept ──► permit? ──no──► drop (counted: handshake_capacity)
//!      │ yes, spawn per connection; everything below runs in that task
//!      ▼
//!  TLS handshake (client cert must chain to the mesh CA)   ─┐ handshake_timeout_secs
//!  WebSocket upgrade on /ws/agent                           ─┘ else: drop, log reason
//!      │
//!  pin enrolled for CN and not revoked? ──no──► close 4001
//!      (in a cluster, a pin not enrolled is looked up in the shared store once first)
//!      │
//!  wait for `hello` (hello_timeout_secs) ──none──► close 4002
//!  agent_id == CN? ──no──► 4001     protocol == 1? ──no──► 4002
//!      │
//!  certificate forwarded by a trusted proxy? ──yes──► `welcome` (signed), `challenge`:
//!      │        a `challenge_response` signed by the forwarded key within hello_timeout_secs,
//!      │        else close 4001 (never attached, never dispatched to)
//!  attach under the registry lock: identity checked again ──revoked──► 4004 (never listed)
//!      │                                                   └─retired/unknown──► 4001
//!  (an older session of the same id is closed 4003), send `welcome` (signed over
//!  `hello.nonce` when there is one) unless already sent
//!      │
//!  session loop: frames in ⇄ bounded queue out; ping every heartbeat_secs;
//!  results ──► the command service's bounded results queue (full: stop reading this agent);
//!  silent for 3 intervals ──► drop;  a write stuck for 10 s ──► drop (peer not reading);
//!  revoked ──► 4004;  shutdown ──► `drain` + close 1001
//! ```
//!
//! Refused connections are audited per source through [`crate::audit_flood`]: the first
//! refusal of a source in a window in full, the rest as one summary record.
//!
//! Every refused connection is logged once with its reason code and counted in
//! `agentmesh_hub_rejected_total{reason}`.

mod accept;
mod close;
pub mod drain;
mod handshake;
pub(crate) mod identity;
pub mod proof;
mod session;
pub mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use agentmesh_protocol::{AgentFrame, HelloFrame};
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::HubConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;

pub use accept::serve;

/// A boxed future returned by [`SessionEvents::frame`].
pub type EventFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
/// A boxed future returned by [`SessionEvents::refresh_identity`].
pub type RefreshFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// What the rest of the backend learns from sessions (commands, audit).
pub trait SessionEvents: Send + Sync + 'static {
    /// A session completed `hello`/`welcome` and is registered; `pin` is its certificate's.
    fn connected(&self, _hello: &HelloFrame, _session_id: &str, _pin: &str) {}
    /// A frame arrived on an established session (never `hello`); `spki` is the public key
    /// of the certificate this session authenticated with. The session awaits the future
    /// before reading on, so a flooding agent is slowed down rather than buffered.
    fn frame<'a>(
        &'a self,
        _agent_id: &'a str,
        _spki: &'a [u8],
        _frame: AgentFrame,
    ) -> EventFuture<'a> {
        Box::pin(async {})
    }
    /// A session ended.
    fn disconnected(&self, _agent_id: &str, _session_id: &str) {}
    /// A CA-verified certificate's pin is not enrolled for `agent_id`: reload the agent's
    /// identity from the shared store if that may help (another replica enrolled it and
    /// the announcement was lost). `true` when reloaded, so the check is worth repeating.
    fn refresh_identity<'a>(&'a self, _agent_id: &'a str) -> RefreshFuture<'a> {
        Box::pin(async { false })
    }
}

/// Everything a hub connection task needs.
pub struct HubContext {
    /// `[hub]` settings.
    pub config: HubConfig,
    /// Enrolments and sessions.
    pub registry: Arc<Registry>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// TLS acceptor with mandatory client auth.
    pub acceptor: TlsAcceptor,
    /// The same chain verifier, for certificates forwarded by a trusted proxy.
    pub client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// Where session events go.
    pub events: Arc<dyn SessionEvents>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Live connection tasks, so shutdown can wait for them.
    pub tasks: TaskCounter,
    /// Per-address and global admission limits.
    pub limits: Arc<crate::reload::SharedLimits>,
    /// Audit trail.
    pub audit: Arc<crate::audit::Audit>,
    /// Refused handshakes, aggregated per source.
    pub failures: Arc<crate::audit_flood::FailureAudit>,
    /// Settings a config reload changes under live sessions, and the drain plan.
    pub live: Arc<LiveSettings>,
    /// The hub's TLS key, signing `welcome` (reloaded with the certificate).
    pub hub_key: Arc<proof::HubKey>,
}

/// The hub's settings that a config reload replaces while sessions stay up (the rest of
/// [`HubConfig`] needs a restart), and the reconnect slots handed out at shutdown.
#[derive(Debug)]
pub struct LiveSettings {
    /// `[hub] trusted_proxy_pins`.
    pub trusted_proxy_pins: crate::reload::Swap<Vec<String>>,
    /// `[hub] trusted_proxies`: addresses charged after TLS instead of before it.
    pub trusted_proxies: crate::reload::Swap<Vec<crate::client_addr::Cidr>>,
    /// Reconnect slots for `drain` frames.
    pub drain: drain::DrainPlan,
    /// `[hub] drain_grace_secs`.
    drain_grace_secs: std::sync::atomic::AtomicU64,
    /// Set when shutdown begins (before the grace for commands in flight).
    draining: std::sync::atomic::AtomicBool,
}

impl LiveSettings {
    /// The settings of `hub` and `limits` as loaded.
    pub fn new(hub: &HubConfig, limits: &crate::config::LimitsConfig) -> Self {
        LiveSettings {
            trusted_proxy_pins: crate::reload::Swap::new(hub.trusted_proxy_pins.clone()),
            trusted_proxies: crate::reload::Swap::new(hub.trusted_proxies.clone()),
            drain: drain::DrainPlan::new(
                hub.drain_reconnect_after_ms,
                limits.hub_handshakes_per_sec,
            ),
            drain_grace_secs: hub.drain_grace_secs.into(),
            draining: false.into(),
        }
    }

    /// Whether shutdown has begun (for `/ready` and tests).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the start of shutdown.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// How long in-flight commands may take at shutdown before sessions are drained.
    pub fn drain_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.drain_grace_secs.load(Ordering::Relaxed))
    }

    /// Applies a reloaded config.
    pub fn reload(&self, hub: &HubConfig, limits: &crate::config::LimitsConfig) {
        self.trusted_proxy_pins
            .store(hub.trusted_proxy_pins.clone());
        self.trusted_proxies.store(hub.trusted_proxies.clone());
        self.drain
            .configure(hub.drain_reconnect_after_ms, limits.hub_handshakes_per_sec);
        self.drain_grace_secs
            .store(hub.drain_grace_secs, Ordering::Relaxed);
    }
}

impl HubContext {
    /// The tungstenite settings: small buffers (a hub holds many idle sessions) and the
    /// configured message limit.
    pub fn ws_config(&self) -> WebSocketConfig {
        let max = self.config.max_message_bytes;
        WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(max.saturating_mul(2))
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

/// Counts live tasks and wakes a waiter when the count reaches zero.
#[derive(Debug, Clone, Default)]
pub struct TaskCounter {
    inner: Arc<(AtomicUsize, Notify)>,
}

/// Decrements its [`TaskCounter`] when dropped.
#[derive(Debug)]
pub struct TaskGuard(TaskCounter);

impl TaskCounter {
    /// Registers a task until the guard drops.
    pub fn enter(&self) -> TaskGuard {
        self.inner.0.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.clone())
    }

    /// Current number of tasks.
    pub fn count(&self) -> usize {
        self.inner.0.load(Ordering::SeqCst)
    }

    /// Waits until no task is left.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.1.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.inner.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.inner.1.notify_waiters();
        }
    }
}

/// Clears the "hub is listening" flag `/ready` reads when dropped: when the accept loop
/// ends, and also when its task is aborted or panics.
#[derive(Debug)]
pub struct ListeningGuard(pub Arc<std::sync::atomic::AtomicBool>);

impl Drop for ListeningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::ListeningGuard;

    #[tokio::test]
    async fn ready_learns_that_the_accept_loop_is_gone_even_when_aborted() {
        let flag = Arc::new(AtomicBool::new(true));
        let guard = ListeningGuard(flag.clone());
        let task = tokio::spawn(async move {
            let _listening = guard;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert!(flag.load(Ordering::Relaxed));
        task.abort();
        let _ = task.await;
        assert!(!flag.load(Ordering::Relaxed));
    }
}
