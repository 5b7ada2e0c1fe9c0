//! Config reload (SIGHUP, `ExecReload=`): the new file is loaded and checked whole before
//! anything changes; then tokens, limits, static enrolments and their labels, trusted proxy
//! pins, the drain settings, the log filter and the hub's TLS certificate are swapped in.
//! Live sessions stay up. A refused file is logged and audited (`config_reload_failed`) and
//! the running config is kept; a reload never stops the daemon.
//!
//! ```text
//!  SIGHUP ─► load + validate file ─► load hub cert/key, parse [log] level ─┬─ error ─► keep old
//!                                                                        ▼
//!   swap: tokens, [limits], [[agents]] (+ labels), trusted_proxy_pins, [hub]/[http] trusted_proxies, drain, log, hub cert
//!   keep: listen addresses, store, audit, [ca], other [hub] keys ("needs restart")
//! ```
//!
//! # Layout
//! - this module: [`Reloader`], what is reloadable and what needs a restart.
//! - `swap`: [`Swap`], the value a reload replaces whole.

mod swap;

use std::sync::Arc;

use tracing::{error, info, warn};

pub use swap::Swap;

use crate::audit::{events, Audit};
use crate::auth::TokenStore;
use crate::config::{BackendConfig, ConfigError};
use crate::enrol::Enrolment;
use crate::hub::tls::{certified_key, SwappableCert, TlsSetupError};
use crate::hub::LiveSettings;
use crate::labels::AgentLabels;
use crate::limits::RateLimits;

/// The rate limiters, replaced whole when `[limits]` changes (buckets start full again).
pub type SharedLimits = Swap<RateLimits>;

/// Applies a new log filter (`[log] level`); the binary installs it, tests leave it out.
pub use agentmesh_daemon::LogHook;

/// Why a reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The hub certificate or key is unusable.
    #[error("hub.cert/hub.key: {0}")]
    Tls(#[from] TlsSetupError),
    /// The log filter was refused.
    #[error("log.level: {0}")]
    Log(String),
    /// The backend was started without a config file.
    #[error("started without a config file; nothing to reload")]
    NoFile,
    /// Applying `[[agents]]` failed half way (store error); the rest was applied.
    #[error("agents: {0}")]
    Agents(String),
}

/// What a successful reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings that took effect.
    pub changed: Vec<&'static str>,
    /// Settings that changed in the file but keep their old value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Where a reload reads the config and how it applies the log filter.
#[derive(Default)]
pub struct ReloadSource {
    /// The config file (none: reloads are refused).
    pub path: Option<std::path::PathBuf>,
    /// Applies `[log] level`.
    pub log: Option<LogHook>,
}

/// Everything a reload swaps, and the config currently in force.
pub struct Reloader {
    /// The file reloads read.
    pub path: Option<std::path::PathBuf>,
    /// Operator tokens.
    pub tokens: Arc<TokenStore>,
    /// Rate limiters.
    pub limits: Arc<SharedLimits>,
    /// Trusted proxy pins and addresses, and drain slots.
    pub live: Arc<LiveSettings>,
    /// `[http] trusted_proxies` (whose forwarded client address the API honours).
    pub http_trusted_proxies: Arc<Swap<Vec<crate::client_addr::Cidr>>>,
    /// The hub's server certificate.
    pub cert: Arc<SwappableCert>,
    /// The hub's key as it signs `welcome` (swapped with the certificate).
    pub hub_key: Arc<crate::hub::proof::HubKey>,
    /// Static enrolments.
    pub enrolment: Arc<Enrolment>,
    /// Authoritative labels.
    pub labels: Arc<AgentLabels>,
    /// Audit trail.
    pub audit: Arc<Audit>,
    /// Log filter hook.
    pub log: Option<LogHook>,
    /// The config in force; also serialises reloads.
    pub current: tokio::sync::Mutex<BackendConfig>,
}

impl Reloader {
    /// Reloads from [`Reloader::path`] (a backend started without a file cannot reload).
    pub async fn reload_from_file(&self) -> Result<ReloadReport, ReloadError> {
        let Some(path) = &self.path else {
            let e = ReloadError::NoFile;
            warn!(error = %e, "config reload refused");
            return Err(e);
        };
        self.apply(BackendConfig::load(path)).await
    }

    /// Applies `loaded` (the result of loading the file) or, if it is an error or its TLS
    /// material or log filter are unusable, keeps the running config. Logged and audited
    /// either way.
    pub async fn apply(
        &self,
        loaded: Result<BackendConfig, ConfigError>,
    ) -> Result<ReloadReport, ReloadError> {
        let file = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut current = self.current.lock().await;
        match self.swap(&mut current, loaded).await {
            Ok(report) => {
                for key in &report.needs_restart {
                    warn!(
                        key,
                        "config changed but needs a restart; keeping the running value"
                    );
                }
                info!(changed = ?report.changed, needs_restart = ?report.needs_restart, "config reloaded");
                self.audit.record(events::config_reloaded(
                    &file,
                    &report.changed,
                    &report.needs_restart,
                ));
                Ok(report)
            }
            Err(e) => {
                error!(error = %e, "config reload refused; keeping the running config");
                self.audit
                    .record(events::config_reload_failed(&file, &e.to_string()));
                Err(e)
            }
        }
    }

    async fn swap(
        &self,
        current: &mut BackendConfig,
        loaded: Result<BackendConfig, ConfigError>,
    ) -> Result<ReloadReport, ReloadError> {
        let mut new = loaded?;
        let needs_restart = keep_restart_only(current, &mut new);
        // Everything that can fail is checked before anything is swapped.
        let key = certified_key(&new.hub.cert, &new.hub.key)?;
        let cert_changed = key.cert != self.cert.current().cert;
        if cert_changed {
            // Also refuses a key that cannot sign `welcome` (not P-256), keeping the old one.
            crate::hub::proof::HubKey::load(&new.hub.cert, &new.hub.key)?;
        }
        let level = match (&new.log.level, &self.log) {
            (Some(level), Some(_)) if new.log != current.log => Some(level.clone()),
            _ => None,
        };
        if let (Some(level), Some(hook)) = (&level, &self.log) {
            hook(level).map_err(ReloadError::Log)?;
        }
        let mut changed = Vec::new();
        if level.is_some() {
            changed.push("log.level");
        }
        if cert_changed {
            self.hub_key.reload(&new.hub.cert, &new.hub.key)?;
            let pins = key
                .cert
                .first()
                .and_then(|c| mesh_certs::pin_from_cert_der(c.as_ref()).ok())
                .into_iter()
                .collect();
            self.cert.replace(key);
            self.enrolment.set_hub_pins(pins);
            changed.push("hub.cert");
        }
        if new.tokens != current.tokens {
            self.tokens.replace(&new.tokens);
            changed.push("tokens");
        }
        if new.limits != current.limits {
            self.limits.store(RateLimits::new(&new.limits));
            changed.push("limits");
        }
        if new.hub.trusted_proxy_pins != current.hub.trusted_proxy_pins {
            changed.push("hub.trusted_proxy_pins");
        }
        if new.hub.trusted_proxies != current.hub.trusted_proxies {
            changed.push("hub.trusted_proxies");
        }
        if new.http.trusted_proxies != current.http.trusted_proxies {
            self.http_trusted_proxies
                .store(new.http.trusted_proxies.clone());
            changed.push("http.trusted_proxies");
        }
        if new.hub.drain_reconnect_after_ms != current.hub.drain_reconnect_after_ms
            || new.hub.drain_grace_secs != current.hub.drain_grace_secs
        {
            changed.push("hub.drain");
        }
        self.live.reload(&new.hub, &new.limits);
        let mut agents_error = None;
        if new.agents != current.agents {
            changed.push("agents");
            if let Err(e) = self.enrolment.reload_static(&new.agents).await {
                agents_error = Some(e.to_string());
            }
            if let Err(e) = self.labels.reload_config(&new.agents).await {
                agents_error = Some(e.to_string());
            }
        }
        *current = new;
        match agents_error {
            Some(e) => Err(ReloadError::Agents(e)),
            None => Ok(ReloadReport {
                changed,
                needs_restart,
            }),
        }
    }
}

/// Copies every setting that needs a restart from `old` into `new` and names those that
/// differed, so the config in force stays what the process actually runs with.
fn keep_restart_only(old: &BackendConfig, new: &mut BackendConfig) -> Vec<&'static str> {
    let mut differ = Vec::new();
    macro_rules! keep {
        ($($key:literal => $($field:ident).+;)*) => {$(
            if old.$($field).+ != new.$($field).+ {
                differ.push($key);
                new.$($field).+ = old.$($field).+.clone();
            }
        )*};
    }
    keep! {
        "http.listen" => http.listen;
        "http.max_body_bytes" => http.max_body_bytes;
        "hub.listen" => hub.listen;
        "hub.client_ca" => hub.client_ca;
        "hub.heartbeat_secs" => hub.heartbeat_secs;
        "hub.hello_timeout_secs" => hub.hello_timeout_secs;
        "hub.handshake_timeout_secs" => hub.handshake_timeout_secs;
        "hub.max_message_bytes" => hub.max_message_bytes;
        "hub.max_pending_handshakes" => hub.max_pending_handshakes;
        "hub.send_queue" => hub.send_queue;
        "store" => store;
        "audit" => audit;
        "ca" => ca;
        "cluster" => cluster;
        "limits.max_queue_ttl_ms" => limits.max_queue_ttl_ms;
        "limits.result_grace_secs" => limits.result_grace_secs;
        "limits.renewals_per_agent_per_hour" => limits.renewals_per_agent_per_hour;
    }
    differ
}

#[cfg(test)]
mod tests;
