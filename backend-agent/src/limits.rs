//! Rate limits (token buckets via `governor`): per operator token, per target agent, per
//! source address for hub connection attempts, and a global hub admission rate that paces a
//! reconnect storm after a restart instead of letting it stampede the TLS stack.
//!
//! Keyed limiters grow one entry per key; [`RateLimits::prune`] drops idle keys and runs
//! periodically, and keys beyond [`MAX_KEYS`] are refused outright so a spoofed-address
//! flood cannot grow memory without bound.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitsConfig;

/// Most keys one keyed limiter tracks; new keys beyond it are refused until a prune.
pub const MAX_KEYS: usize = 100_000;

/// All of the backend's limiters. A rate of 0 disables that limiter.
#[derive(Debug)]
pub struct RateLimits {
    operator: Option<DefaultKeyedRateLimiter<String>>,
    agent: Option<DefaultKeyedRateLimiter<String>>,
    hub_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    hub_admission: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl RateLimits {
    /// Builds the limiters from `[limits]`.
    pub fn new(c: &LimitsConfig) -> Self {
        RateLimits {
            operator: quota(c.operator_commands_per_sec, c.operator_burst).map(RateLimiter::keyed),
            agent: quota(c.agent_commands_per_sec, c.agent_burst).map(RateLimiter::keyed),
            hub_ip: quota(c.hub_connects_per_ip_per_sec, c.hub_connects_per_ip_burst)
                .map(RateLimiter::keyed),
            hub_admission: quota(c.hub_handshakes_per_sec, c.hub_handshake_burst)
                .map(RateLimiter::direct),
            clock: DefaultClock::default(),
        }
    }

    fn check_keyed<K: Hash + Eq + Clone>(
        &self,
        limiter: &Option<DefaultKeyedRateLimiter<K>>,
        key: &K,
    ) -> Result<(), Duration> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        if limiter.len() >= MAX_KEYS {
            return Err(Duration::from_secs(1));
        }
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// One command request by operator token `name`; `Err` carries the wait.
    pub fn check_operator(&self, name: &str) -> Result<(), Duration> {
        self.check_keyed(&self.operator, &name.to_owned())
    }

    /// One command for agent `id`.
    pub fn check_agent(&self, id: &str) -> Result<(), Duration> {
        self.check_keyed(&self.agent, &id.to_owned())
    }

    /// One hub connection attempt from `ip`.
    pub fn check_hub_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_keyed(&self.hub_ip, &ip)
    }

    /// How long a new handshake must wait for the global admission rate (zero = go now).
    /// The slot is taken when this returns zero; call again after waiting.
    pub fn hub_admission(&self) -> Duration {
        match &self.hub_admission {
            None => Duration::ZERO,
            Some(limiter) => match limiter.check() {
                Ok(()) => Duration::ZERO,
                Err(not_until) => not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_millis(1)),
            },
        }
    }

    /// Forgets idle keys (call periodically).
    pub fn prune(&self) {
        if let Some(l) = &self.operator {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.agent {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.hub_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Seconds for a `Retry-After` header (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_sec: u32, burst: u32) -> RateLimits {
        RateLimits::new(&LimitsConfig {
            operator_commands_per_sec: per_sec,
            operator_burst: burst,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_key() {
        let l = limits(2, 4);
        let passed = (0..20).filter(|_| l.check_operator("a").is_ok()).count();
        assert!((4..=5).contains(&passed), "{passed}");
        let wait = l.check_operator("a").unwrap_err();
        assert!(wait <= Duration::from_millis(600), "{wait:?}");
        assert!(
            l.check_operator("b").is_ok(),
            "another token is not starved"
        );
    }

    #[test]
    fn zero_disables() {
        let l = limits(0, 0);
        assert!((0..1000).all(|_| l.check_operator("a").is_ok()));
    }
}
