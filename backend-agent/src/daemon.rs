//! Running the backend as a daemon: until the shutdown future completes, reloading each time
//! the reload channel yields (SIGHUP), pruning idle rate-limit keys.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_daemon::notify;
use tokio::sync::watch;

use crate::config::BackendConfig;
use crate::{reload, Backend, Listeners, ReloadSource, RunError};

/// Forgets idle rate-limit keys every minute until shutdown.
pub(crate) fn spawn_prune(limits: Arc<reload::SharedLimits>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = agentmesh_daemon::stopped(&mut stop) => break,
                _ = every.tick() => limits.load().prune(),
            }
        }
    });
}

/// Runs the backend until `shutdown` completes, then drains.
pub async fn run(
    listeners: Listeners,
    config: BackendConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_reloadable(
        listeners,
        config,
        ReloadSource::default(),
        tokio::sync::mpsc::channel(1).1,
        shutdown,
    )
    .await
}

/// [`run`], reloading the config from `source` each time `reloads` yields (SIGHUP).
pub async fn run_reloadable(
    listeners: Listeners,
    config: BackendConfig,
    source: ReloadSource,
    mut reloads: tokio::sync::mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let backend = Backend::start_reloadable(listeners, config, source).await?;
    notify::ready();
    let watchdog = backend.spawn_watchdog();
    let reloader = backend.reloader();
    let serve_reloads = async move {
        while reloads.recv().await.is_some() {
            // Refusals are logged and audited inside; the daemon runs on either way.
            let _ = reloader.reload_from_file().await;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = shutdown => {}
        _ = serve_reloads => {}
    }
    notify::stopping();
    let result = backend.shutdown().await;
    if let Some(w) = watchdog {
        w.abort();
    }
    result
}
