//! systemd readiness (`Type=notify`): sends `READY=1` / `STOPPING=1` to `$NOTIFY_SOCKET` with
//! the `sd-notify` crate. A no-op when not started by systemd.
//!
//! Public so the backend can use it too. Failures are logged, never fatal: the service works
//! the same without systemd. `NOTIFY_SOCKET` is kept in the environment because `stopping`
//! comes later; verb programs never see it (their environment is cleared).

use sd_notify::NotifyState;

/// Tells systemd the service is ready.
pub fn ready() {
    send(NotifyState::Ready);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    send(NotifyState::Stopping);
}

fn send(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
