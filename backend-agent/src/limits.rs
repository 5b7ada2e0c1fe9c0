//! Rate limits (token buckets via `governor`): per operator token, per target agent, per
//! source address for hub connection attempts and for join-token redemptions, per agent
//! identity for hub connections (after TLS, so behind a proxy one noisy agent is throttled
//! alone), and a global
//! hub admission rate that paces a reconnect storm after a restart instead of letting it
//! stampede the TLS stack.
//!
//! Keyed limiters ([`KeyedLimiter`]) hold one bucket per key, at most [`MAX_KEYS`] keys:
//! at the cap a *new* key is refused while known keys keep their buckets, so a flood of
//! spoofed or rotating sources cannot lock out the callers already being served.
//! [`RateLimits::prune`] drops keys whose bucket has refilled and runs periodically.
//! Source addresses are keyed by [`source_key`]: IPv6 by /64, since one host usually owns a
//! whole /64 and could otherwise mint a fresh key per request.

mod keyed;

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub use keyed::{KeyedLimiter, Refusal, MAX_KEYS};

use crate::config::LimitsConfig;

/// All of the backend's limiters. A rate of 0 disables that limiter.
#[derive(Debug)]
pub struct RateLimits {
    operator: Option<KeyedLimiter<String>>,
    agent: Option<KeyedLimiter<String>>,
    hub_ip: Option<KeyedLimiter<IpAddr>>,
    hub_identity: Option<KeyedLimiter<String>>,
    enrol: Option<KeyedLimiter<IpAddr>>,
    hub_admission: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

fn keyed<K: std::hash::Hash + Eq + Clone>(q: Option<Quota>) -> Option<KeyedLimiter<K>> {
    q.map(|q| KeyedLimiter::new(q, MAX_KEYS))
}

/// The key a source address is limited under: IPv4 as is (also when mapped into IPv6),
/// IPv6 by its /64 prefix.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &Option<KeyedLimiter<K>>,
    key: &K,
) -> Result<(), Duration> {
    match limiter {
        None => Ok(()),
        Some(l) => l.check(key).map_err(Refusal::wait),
    }
}

impl RateLimits {
    /// Builds the limiters from `[limits]`.
    pub fn new(c: &LimitsConfig) -> Self {
        RateLimits {
            operator: keyed(quota(c.operator_commands_per_sec, c.operator_burst)),
            agent: keyed(quota(c.agent_commands_per_sec, c.agent_burst)),
            hub_ip: keyed(quota(
                c.hub_connects_per_ip_per_sec,
                c.hub_connects_per_ip_burst,
            )),
            hub_identity: keyed(quota(
                c.hub_connects_per_agent_per_sec,
                c.hub_connects_per_agent_burst,
            )),
            enrol: keyed(quota(c.enrol_attempts_per_sec, c.enrol_burst)),
            hub_admission: quota(c.hub_handshakes_per_sec, c.hub_handshake_burst)
                .map(RateLimiter::direct),
            clock: DefaultClock::default(),
        }
    }

    /// One command request by operator token `name`; `Err` carries the wait.
    pub fn check_operator(&self, name: &str) -> Result<(), Duration> {
        check(&self.operator, &name.to_owned())
    }

    /// One command for agent `id`.
    pub fn check_agent(&self, id: &str) -> Result<(), Duration> {
        check(&self.agent, &id.to_owned())
    }

    /// One hub connection attempt from `ip` (IPv6 keyed by /64).
    pub fn check_hub_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        check(&self.hub_ip, &source_key(ip))
    }

    /// One hub connection by agent identity `cn`, counted once its certificate is known.
    pub fn check_hub_identity(&self, cn: &str) -> Result<(), Duration> {
        check(&self.hub_identity, &cn.to_owned())
    }

    /// One join-token redemption from `ip` (IPv6 keyed by /64). Its own limiter, so an
    /// enrolment flood never spends an operator's budget or keys.
    pub fn check_enrol(&self, ip: IpAddr) -> Result<(), Duration> {
        check(&self.enrol, &source_key(ip))
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
        for l in [&self.operator, &self.agent, &self.hub_identity]
            .into_iter()
            .flatten()
        {
            l.prune();
        }
        for l in [&self.hub_ip, &self.enrol].into_iter().flatten() {
            l.prune();
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

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
        assert_eq!(
            source_key("::ffff:10.0.0.7".parse().unwrap()),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
        let l = RateLimits::new(&LimitsConfig {
            enrol_attempts_per_sec: 1,
            enrol_burst: 3,
            hub_connects_per_ip_per_sec: 1,
            hub_connects_per_ip_burst: 3,
            ..LimitsConfig::default()
        });
        for (n, ip) in [a, b, a, b].iter().enumerate() {
            assert_eq!(l.check_enrol(*ip).is_ok(), n < 3, "attempt {n}");
            assert_eq!(l.check_hub_ip(*ip).is_ok(), n < 3, "attempt {n}");
        }
        assert!(
            l.check_enrol(other).is_ok(),
            "the next /64 has its own bucket"
        );
    }

    #[test]
    fn one_noisy_identity_does_not_spend_another_identitys_connects() {
        let l = RateLimits::new(&LimitsConfig {
            hub_connects_per_agent_per_sec: 1,
            hub_connects_per_agent_burst: 3,
            ..LimitsConfig::default()
        });
        let passed = (0..50)
            .filter(|_| l.check_hub_identity("noisy").is_ok())
            .count();
        assert!((3..=4).contains(&passed), "{passed}");
        assert!(l.check_hub_identity("quiet").is_ok());
        let off = RateLimits::new(&LimitsConfig {
            hub_connects_per_agent_per_sec: 0,
            ..LimitsConfig::default()
        });
        assert!((0..100).all(|_| off.check_hub_identity("noisy").is_ok()));
    }

    #[test]
    fn enrolment_does_not_spend_the_operator_budget() {
        let l = RateLimits::new(&LimitsConfig {
            operator_commands_per_sec: 1,
            operator_burst: 1,
            enrol_attempts_per_sec: 1,
            enrol_burst: 1,
            ..LimitsConfig::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check_enrol(ip).is_ok());
        assert!((0..100).all(|_| l.check_enrol(ip).is_err()));
        assert!(l.check_operator("ops").is_ok(), "operators are not blocked");
    }
}
