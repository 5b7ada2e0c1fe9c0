//! Process signals: SIGINT/SIGTERM stop a daemon, SIGHUP reloads its config.
//!
//! Handlers are installed when these functions are called, not when the future or channel is
//! first polled: a SIGTERM sent right after `READY=1` (a service manager stopping a daemon that
//! just started) is then a clean shutdown, and an early SIGHUP a reload, never the default
//! action's exit. Both must be called inside the tokio runtime.

use std::future::Future;

use tokio::sync::{mpsc, watch};

/// Installs the SIGINT and SIGTERM handlers now; the future completes on either.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        if let Err(e) = term.as_ref().and(int.as_ref()) {
            // Without a handler the default action still stops the process.
            tracing::warn!(error = %e, "cannot install the SIGTERM/SIGINT handlers");
        }
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => tracing::info!("SIGTERM received"),
                _ = wait(int) => tracing::info!("SIGINT received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received");
    }
}

/// A channel that yields once per SIGHUP, the handler installed now. Bursts coalesce: while
/// a reload is pending another one adds nothing, since it will read the newest file anyway.
pub fn hangups() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP received: reloading the config");
                        if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                            return;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot install the SIGHUP handler"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Completes once the in-process stop flag is set (or its sender is gone): how the tasks of a
/// daemon learn that the shutdown signal came.
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    // Map the guard `wait_for` returns to `()`: it must not live across an await.
    let _ = rx.wait_for(|stop| *stop).await.map(|_| ());
}
