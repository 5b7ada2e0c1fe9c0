//! Drain that spreads the herd: on shutdown every live session gets its own reconnect slot
//! in its `drain` frame, so a restart of N agents comes back at the hub's admission rate
//! instead of all at once.
//!
//! ```text
//!  SIGTERM ─► plan.begin(N live sessions)
//!  session k (in the order they drain) ─► drain { reconnect_after_ms: base + k × 1000 / rate }
//!  window = N ÷ rate   (rate = [limits] hub_handshakes_per_sec; 0 = no spread)
//! ```
//!
//! `base` is `[hub] drain_reconnect_after_ms`: time for the backend to come back. Slots are
//! uniform over the window, one admission interval apart, so the reconnecting fleet arrives
//! at about the rate the hub admits it; the agent adds its own jitter on top.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use crate::commands::CommandService;
use crate::registry::Registry;
use crate::store::CommandState;

/// How often the shutdown grace looks for commands still in flight.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(100);

/// Waits, at most `grace`, until no command dispatched to a connected agent is still
/// waiting for its result, so results in flight land before sessions are drained. Commands
/// of agents that are not connected do not hold the shutdown up: their results come later.
pub async fn await_in_flight(commands: &CommandService, registry: &Registry, grace: Duration) {
    if grace.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + grace;
    let mut announced = false;
    loop {
        let waiting = match commands.store().unfinished_commands().await {
            Ok(list) => list
                .iter()
                .filter(|r| matches!(r.status, CommandState::Dispatched | CommandState::Running))
                .filter(|r| registry.session(&r.agent_id).is_some())
                .count(),
            Err(e) => {
                warn!(error = %e, "drain: cannot list commands in flight; draining now");
                return;
            }
        };
        if waiting == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                commands = waiting,
                "drain: grace over with commands still in flight"
            );
            return;
        }
        if !announced {
            announced = true;
            info!(
                commands = waiting,
                grace_secs = grace.as_secs(),
                "drain: waiting for commands in flight"
            );
        }
        tokio::time::sleep(IN_FLIGHT_POLL).await;
    }
}

/// Hands out reconnect slots for `drain` frames.
#[derive(Debug)]
pub struct DrainPlan {
    base_ms: AtomicU64,
    per_sec: AtomicU32,
    sessions: AtomicU64,
    next: AtomicU64,
}

impl DrainPlan {
    /// A plan with `base_ms` before the first slot, spread at `per_sec` (0 = no spread).
    pub fn new(base_ms: u64, per_sec: u32) -> Self {
        DrainPlan {
            base_ms: AtomicU64::new(base_ms),
            per_sec: AtomicU32::new(per_sec),
            sessions: AtomicU64::new(0),
            next: AtomicU64::new(0),
        }
    }

    /// New settings from a config reload.
    pub fn configure(&self, base_ms: u64, per_sec: u32) {
        self.base_ms.store(base_ms, Ordering::Relaxed);
        self.per_sec.store(per_sec, Ordering::Relaxed);
    }

    /// Starts handing out slots for `sessions` live sessions (call once, at shutdown).
    pub fn begin(&self, sessions: usize) {
        self.sessions.store(
            u64::try_from(sessions).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.next.store(0, Ordering::Relaxed);
    }

    /// The spread window for the sessions of [`DrainPlan::begin`], in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.offset_ms(self.sessions.load(Ordering::Relaxed))
    }

    /// The next session's `reconnect_after_ms`.
    pub fn next_slot(&self) -> u64 {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let sessions = self.sessions.load(Ordering::Relaxed).max(1);
        // A session that attached after `begin` (its handshake was already under way) goes
        // round again rather than past the end of the window.
        let k = k % sessions;
        self.base_ms
            .load(Ordering::Relaxed)
            .saturating_add(self.offset_ms(k))
    }

    /// Where slot `k` starts after the base: `k` admission intervals.
    fn offset_ms(&self, k: u64) -> u64 {
        match u64::from(self.per_sec.load(Ordering::Relaxed)) {
            0 => 0,
            rate => k.saturating_mul(1000) / rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DrainPlan;

    #[test]
    fn slots_are_uniform_over_n_divided_by_the_rate() {
        let plan = DrainPlan::new(1000, 200);
        plan.begin(400);
        assert_eq!(plan.window_ms(), 2000);
        let slots: Vec<u64> = (0..400).map(|_| plan.next_slot()).collect();
        assert_eq!(slots[0], 1000);
        assert_eq!(*slots.iter().max().unwrap_or(&0), 1000 + 1995);
        assert!(
            slots.windows(2).all(|w| w[1] - w[0] == 5),
            "one slot per 5 ms"
        );
    }

    #[test]
    fn latecomers_wrap_and_no_rate_means_no_spread() {
        let plan = DrainPlan::new(0, 10);
        plan.begin(2);
        let slots: Vec<u64> = (0..3).map(|_| plan.next_slot()).collect();
        assert_eq!(slots, [0, 100, 0]);
        plan.configure(50, 0);
        assert_eq!(plan.next_slot(), 50);
        assert_eq!(plan.window_ms(), 0);
    }
}
