//! The agent's own limits (`[limits]`): commands running at once and commands started per
//! sliding minute. Built-ins count like any other verb. Over either limit a command is refused
//! at once (`rejected`, code `rate_limited`); nothing waits in a queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Length of the sliding window of `commands_per_minute`.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// `limits.max_concurrency` commands are already running.
    #[error("limits.max_concurrency: {0} commands are already running on this agent")]
    Concurrency(u32),
    /// `limits.commands_per_minute` commands started in the last 60 s.
    #[error("limits.commands_per_minute: {0} commands already started in the last 60 s")]
    Rate(u32),
}

/// Counters behind the limits; shared by the executor and the permits it hands out.
#[derive(Debug)]
pub struct Limits {
    max_concurrency: u32,
    per_minute: u32,
    running: u32,
    /// Start times within the last [`WINDOW`]; never longer than `per_minute`.
    window: VecDeque<Instant>,
}

impl Limits {
    /// Limits of `max_concurrency` at once and `per_minute` per sliding minute (both ≥ 1).
    pub fn new(max_concurrency: u32, per_minute: u32) -> Arc<Mutex<Limits>> {
        Arc::new(Mutex::new(Limits {
            max_concurrency: max_concurrency.max(1),
            per_minute: per_minute.max(1),
            running: 0,
            window: VecDeque::new(),
        }))
    }

    /// New limits from a config reload; commands running now keep their permits.
    pub fn reconfigure(&mut self, max_concurrency: u32, per_minute: u32) {
        self.max_concurrency = max_concurrency.max(1);
        self.per_minute = per_minute.max(1);
    }

    /// Admits one command at `now`, or says which limit refuses it.
    pub fn try_admit(&mut self, now: Instant) -> Result<(), LimitError> {
        while self
            .window
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.window.pop_front();
        }
        if self.running >= self.max_concurrency {
            return Err(LimitError::Concurrency(self.max_concurrency));
        }
        if self.window.len() >= self.per_minute as usize {
            return Err(LimitError::Rate(self.per_minute));
        }
        self.running += 1;
        self.window.push_back(now);
        Ok(())
    }

    /// Commands running now.
    pub fn running(&self) -> u32 {
        self.running
    }

    fn release(&mut self) {
        self.running = self.running.saturating_sub(1);
    }
}

/// One admitted command's slot; dropping it frees the concurrency slot (the start stays in the
/// per-minute window).
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Mutex<Limits>>,
}

/// Admits one command against the shared `limits`.
pub fn admit(limits: &Arc<Mutex<Limits>>, now: Instant) -> Result<Permit, LimitError> {
    lock(limits).try_admit(now)?;
    Ok(Permit {
        limits: limits.clone(),
    })
}

impl Drop for Permit {
    fn drop(&mut self) {
        lock(&self.limits).release();
    }
}

fn lock(limits: &Mutex<Limits>) -> std::sync::MutexGuard<'_, Limits> {
    limits.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_released_by_dropping_the_permit() {
        let limits = Limits::new(2, 100);
        let now = Instant::now();
        let a = admit(&limits, now).unwrap();
        let _b = admit(&limits, now).unwrap();
        assert_eq!(admit(&limits, now).unwrap_err(), LimitError::Concurrency(2));
        drop(a);
        let _c = admit(&limits, now).unwrap();
        assert_eq!(lock(&limits).running(), 2);
    }

    #[test]
    fn the_per_minute_window_slides() {
        let limits = Limits::new(100, 3);
        let t0 = Instant::now();
        for i in 0..3 {
            drop(admit(&limits, t0 + Duration::from_secs(i * 10)).unwrap());
        }
        let err = admit(&limits, t0 + Duration::from_secs(59)).unwrap_err();
        assert_eq!(err, LimitError::Rate(3));
        assert!(err.to_string().contains("commands_per_minute"), "{err}");
        // The first start leaves the window 60 s after it happened; only one slot frees up.
        drop(admit(&limits, t0 + Duration::from_secs(60)).unwrap());
        assert!(admit(&limits, t0 + Duration::from_secs(61)).is_err());
        drop(admit(&limits, t0 + Duration::from_secs(70)).unwrap());
    }

    #[test]
    fn refusals_do_not_use_up_the_window() {
        let limits = Limits::new(1, 2);
        let now = Instant::now();
        let held = admit(&limits, now).unwrap();
        for _ in 0..10 {
            assert!(matches!(
                admit(&limits, now),
                Err(LimitError::Concurrency(1))
            ));
        }
        drop(held);
        drop(admit(&limits, now).unwrap());
        assert_eq!(admit(&limits, now).unwrap_err(), LimitError::Rate(2));
    }
}
