//! systemd notification (`Type=notify`, `WatchdogSec=`) with the `sd-notify` crate:
//! `READY=1` / `STOPPING=1`, `STATUS=` lines, and `WATCHDOG=1` keep-alives. All no-ops when
//! not started by systemd (no `$NOTIFY_SOCKET`).
//!
//! Failures are logged, never fatal: the service works the same without systemd.
//! `NOTIFY_SOCKET` is kept in the environment because `stopping` comes later; the gateway's
//! verb programs never see it (their environment is cleared).
//!
//! The watchdog is fed from a task that first asks a probe whether the daemon's main loops
//! are healthy: a wedged runtime sends nothing, and an unhealthy probe stops the keep-alives,
//! so systemd restarts the service after `WatchdogSec=`. The probe's status line is sent
//! whenever it changes (`systemctl status` shows it).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the status line is refreshed when no watchdog asks for more.
pub const STATUS_PERIOD: Duration = Duration::from_secs(2);

/// What a daemon reports at each watchdog tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The main loops are healthy: feed the watchdog.
    pub healthy: bool,
    /// One line for `STATUS=`.
    pub status: String,
}

/// Tells systemd the service is ready.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Sets the status line `systemctl status` shows.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// The keep-alive period for `WATCHDOG_USEC`/`WATCHDOG_PID` as systemd sets them: half the
/// watchdog timeout, and only when the watchdog is meant for this process (`WATCHDOG_PID`
/// unset or equal to `me`, as `sd_watchdog_enabled(3)` has it).
pub fn keepalive_period(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Starts the watchdog and status task when run under systemd (`$NOTIFY_SOCKET` set); `None`
/// otherwise. It stops when `stop` turns true, or — without `stop` — when aborted.
pub fn spawn_watchdog<F>(
    probe: F,
    mut stop: Option<watch::Receiver<bool>>,
) -> Option<JoinHandle<()>>
where
    F: Fn() -> Probe + Send + 'static,
{
    std::env::var_os("NOTIFY_SOCKET")?;
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    let keepalive = keepalive_period(usec.as_deref(), pid.as_deref(), std::process::id());
    let period = keepalive.map_or(STATUS_PERIOD, |k| k.min(STATUS_PERIOD));
    tracing::debug!(?keepalive, "systemd notification task started");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = String::new();
        let mut last_healthy = true;
        loop {
            match stop.as_mut() {
                Some(stop) => tokio::select! {
                    _ = tick.tick() => {}
                    r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                },
                None => {
                    tick.tick().await;
                }
            }
            let p = probe();
            if p.status != last_status {
                status(&p.status);
                last_status = p.status;
            }
            if p.healthy != last_healthy {
                if !p.healthy {
                    tracing::error!(status = %last_status, "main loop unhealthy: not feeding the systemd watchdog");
                }
                last_healthy = p.healthy;
            }
            if keepalive.is_some() && p.healthy {
                send(&[NotifyState::Watchdog]);
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_is_half_the_timeout_for_this_process_only() {
        let me = 4242;
        assert_eq!(
            keepalive_period(Some("30000000"), Some("4242"), me),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            keepalive_period(Some("30000000"), None, me),
            Some(Duration::from_secs(15))
        );
        assert_eq!(keepalive_period(Some("30000000"), Some("1"), me), None);
        assert_eq!(keepalive_period(Some("0"), None, me), None);
        assert_eq!(keepalive_period(Some("soon"), None, me), None);
        assert_eq!(keepalive_period(None, None, me), None);
    }
}
