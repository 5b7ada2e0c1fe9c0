//! Config reload (SIGHUP, `ExecReload=`) on the agent: verbs, limits, labels and certificates
//! change without a restart.
//!
//! ```text
//!  SIGHUP ─► load + validate gateway.toml ─► TLS material loads? verbs build? ─┬─ no ─► keep old
//!                                                                              ▼
//!   executor: new verbs + limits for commands from now on (running ones keep theirs)
//!   dialer:   advertisement (verbs, labels, site, max_concurrency) changed?
//!               yes ─► close the session (1000 "re-advertising") and reconnect at once
//!                      with a fresh `hello`; running commands go on, results are delivered
//!                      on the new session
//!               no  ─► the session stays; certificates take effect at the next connection
//! ```
//!
//! Settings that need a restart (identity, hub URL, state and audit paths, health listener,
//! backoff and renewal timing) keep their running value and are logged as such.

use std::sync::Arc;

use agentmesh_protocol::HelloFrame;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::GatewayConfig;
use crate::exec::Executor;

/// Copies every setting that needs a restart from `old` into `new` and names those that
/// differed.
pub fn keep_restart_only(old: &GatewayConfig, new: &mut GatewayConfig) -> Vec<&'static str> {
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
        "agent.id" => agent.id;
        "agent.state_dir" => agent.state_dir;
        "agent.health_listen" => agent.health_listen;
        "agent.result_retention_secs" => agent.result_retention_secs;
        "agent.renew_before_days" => agent.renew_before_days;
        "outbound.backend_url" => outbound.backend_url;
        "outbound.reconnect_min_ms" => outbound.reconnect_min_ms;
        "outbound.reconnect_max_ms" => outbound.reconnect_max_ms;
        "outbound.healthy_after_secs" => outbound.healthy_after_secs;
        "outbound.max_message_bytes" => outbound.max_message_bytes;
        "audit.path" => audit.path;
    }
    differ
}

/// What `hello` advertises: verbs, labels, site, concurrency.
type Advertisement = (
    Vec<agentmesh_protocol::VerbSpec>,
    std::collections::BTreeMap<String, String>,
    String,
    u32,
);

fn advertisement(config: &GatewayConfig) -> Advertisement {
    (
        config.advertised_verbs(),
        config.agent.labels.clone(),
        config.agent.site.clone(),
        config.limits.max_concurrency,
    )
}

/// Whether `config` advertises something other than what `hello` said.
pub fn advertisement_differs(config: &GatewayConfig, hello: &HelloFrame) -> bool {
    advertisement(config)
        != (
            hello.verbs.clone(),
            hello.labels.clone(),
            hello.site.clone(),
            hello.max_concurrency,
        )
}

/// Completes once the config in force advertises something other than `hello` (never, if
/// no reload ever comes).
pub async fn readvertise_needed(
    config: &mut watch::Receiver<Arc<GatewayConfig>>,
    hello: &HelloFrame,
) {
    loop {
        if advertisement_differs(&config.borrow_and_update(), hello) {
            return;
        }
        if config.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Applies each config `reloads` yields: checks what can fail, reconfigures the executor
/// and publishes the config for the dialer. A refused config is logged and the running one
/// kept. Ends when `reloads` closes.
pub async fn serve(
    mut reloads: mpsc::Receiver<GatewayConfig>,
    executor: Executor,
    published: watch::Sender<Arc<GatewayConfig>>,
) {
    while let Some(mut new) = reloads.recv().await {
        let current = published.borrow().clone();
        let needs_restart = keep_restart_only(&current, &mut new);
        if let Err(e) = crate::tls::client_config(&new.outbound) {
            error!(error = %e, "config reload refused; keeping the running config");
            continue;
        }
        if let Err(e) = executor.reconfigure(
            &new.verbs,
            new.limits.max_concurrency,
            new.limits.commands_per_minute,
        ) {
            error!(error = %e, "config reload refused; keeping the running config");
            continue;
        }
        for key in &needs_restart {
            warn!(
                key,
                "config changed but needs a restart; keeping the running value"
            );
        }
        info!(
            verbs = new.verbs.len(),
            needs_restart = ?needs_restart,
            "config reloaded"
        );
        published.send_replace(Arc::new(new));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, name: &str, extra: &str) -> GatewayConfig {
        let text = format!(
            "[agent]\nid = \"edge-01\"\nsite = \"s\"\nstate_dir = \"/tmp/x\"\n{extra}\n\
             [outbound]\nbackend_url = \"wss://127.0.0.1:1/ws/agent\"\nca = \"/c\"\ncert = \"/c\"\nkey = \"/k\"\n\
             server_pins = [\"sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n"
        );
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        GatewayConfig::load_with_env(&path, std::iter::empty()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn identity_stays_and_labels_are_an_advertisement_change() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let old = config(dir.path(), "a.toml", "");
        let mut new = config(dir.path(), "b.toml", "labels = { role = \"db\" }");
        new.agent.id = "other".into();
        assert_eq!(keep_restart_only(&old, &mut new), ["agent.id"]);
        assert_eq!(new.agent.id, "edge-01");
        assert_eq!(
            advertisement(&old),
            advertisement(&config(dir.path(), "c.toml", ""))
        );
        assert_ne!(advertisement(&old), advertisement(&new));
    }
}
