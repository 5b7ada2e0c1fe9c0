//! Reconnect delays: exponential backoff with jitter, reset after a healthy session.
//!
//! For attempt `n` (0 after a reset) the ceiling is `min(max, min · 2ⁿ)` and the delay is drawn
//! uniformly from `[min, ceiling]`, so a fleet that lost its hub at the same moment spreads its
//! reconnects instead of arriving in lockstep. Server hints (`drain.reconnect_after_ms`,
//! `Retry-After`) are honoured but capped at [`HINT_CAP_FACTOR`] × `max`, so a confused hub
//! cannot park an agent for days.

use std::time::Duration;

use rand::Rng;

/// Server-provided delays are capped at this many times `reconnect_max_ms`.
pub const HINT_CAP_FACTOR: u32 = 10;

/// Backoff state for one dialer.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max` (`min <= max`, validated by the config).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The largest delay this backoff ever returns on its own.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The ceiling for the current attempt: `min(max, min · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1).min(31);
        uniform(rng, self.min, ceiling)
    }

    /// Back to attempt 0 (after a session that stayed up long enough).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A server hint, capped, plus jitter of up to half the hint (at least `min`), so
    /// agents drained together do not return together.
    pub fn after_hint(&self, hint: Duration, rng: &mut impl Rng) -> Duration {
        let hint = self.cap(hint);
        let spread = (hint / 2).max(self.min);
        hint + uniform(rng, Duration::ZERO, spread)
    }

    /// Caps a server-provided delay at [`HINT_CAP_FACTOR`] × `max`.
    pub fn cap(&self, hint: Duration) -> Duration {
        hint.min(self.max.saturating_mul(HINT_CAP_FACTOR))
    }
}

fn uniform(rng: &mut impl Rng, low: Duration, high: Duration) -> Duration {
    let (low, high) = (as_millis(low), as_millis(high));
    if high <= low {
        return Duration::from_millis(low);
    }
    Duration::from_millis(rng.random_range(low..=high))
}

fn as_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_up_to_max() {
        let mut b = Backoff::new(ms(500), ms(30_000));
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn delays_stay_within_min_and_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(ms(500), ms(30_000));
        for _ in 0..1000 {
            let ceiling = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(
                d >= ms(500) && d <= ceiling,
                "{d:?} not in [500ms, {ceiling:?}]"
            );
        }
        // Jitter really spreads: at the max ceiling, 200 draws are not all alike.
        let draws: std::collections::BTreeSet<_> =
            (0..200).map(|_| b.next_delay(&mut rng)).collect();
        assert!(draws.len() > 50);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(ms(1), ms(u64::MAX / 4));
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert!(b.ceiling() <= b.max());
        assert_eq!(b.attempt(), 31);
    }

    #[test]
    fn reset_returns_to_min() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut b = Backoff::new(ms(500), ms(30_000));
        for _ in 0..8 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), ms(30_000));
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(&mut rng), ms(500));
    }

    #[test]
    fn equal_min_and_max_is_constant() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut b = Backoff::new(ms(250), ms(250));
        assert!((0..20).all(|_| b.next_delay(&mut rng) == ms(250)));
    }

    #[test]
    fn hints_are_capped_and_jittered() {
        let mut rng = StdRng::seed_from_u64(5);
        let b = Backoff::new(ms(500), ms(30_000));
        for _ in 0..100 {
            let d = b.after_hint(ms(4_000), &mut rng);
            assert!(d >= ms(4_000) && d <= ms(6_000), "{d:?}");
        }
        assert_eq!(b.cap(Duration::from_secs(86_400)), ms(300_000));
        let d = b.after_hint(Duration::from_secs(86_400), &mut rng);
        assert!(d <= ms(450_000), "{d:?}");
    }
}
