//! A keyed token-bucket limiter whose key cap refuses only keys it does not know yet.
//!
//! `governor`'s keyed limiter cannot tell whether a key is already tracked, so a full map
//! would refuse everyone. Here each key owns a direct `governor` bucket in a bounded map:
//! at [`MAX_KEYS`] a new key is refused (and counted by the caller) while every key already
//! in the map keeps its own bucket, so a spoofed-source flood cannot lock out known callers.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Most keys one keyed limiter tracks; new keys beyond it are refused until a prune.
pub const MAX_KEYS: usize = 100_000;

/// Why a keyed check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key used up its bucket; try again after this long.
    Rate(Duration),
    /// The key is new and the map is full; retry after the next prune.
    KeyCap,
}

impl Refusal {
    /// How long the caller should wait (a key-cap refusal waits one prune tick).
    pub fn wait(self) -> Duration {
        match self {
            Refusal::Rate(d) => d,
            Refusal::KeyCap => Duration::from_secs(1),
        }
    }
}

struct Entry {
    bucket: DefaultDirectRateLimiter,
    last_used: Instant,
}

/// One bucket per key, at most `cap` keys.
pub struct KeyedLimiter<K> {
    quota: Quota,
    cap: usize,
    map: Mutex<HashMap<K, Entry>>,
    clock: DefaultClock,
}

impl<K> std::fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("quota", &self.quota)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter with `quota` per key and at most `cap` keys.
    pub fn new(quota: Quota, cap: usize) -> Self {
        KeyedLimiter {
            quota,
            cap,
            map: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry>> {
        // Every critical section below leaves the map consistent, so poisoning is harmless.
        crate::sync::lock(&self.map)
    }

    /// Takes one unit from `key`'s bucket.
    pub fn check(&self, key: &K) -> Result<(), Refusal> {
        let mut map = self.lock();
        if !map.contains_key(key) {
            if map.len() >= self.cap {
                return Err(Refusal::KeyCap);
            }
            map.insert(
                key.clone(),
                Entry {
                    bucket: RateLimiter::direct(self.quota),
                    last_used: Instant::now(),
                },
            );
        }
        let Some(entry) = map.get_mut(key) else {
            return Err(Refusal::KeyCap);
        };
        entry.last_used = Instant::now();
        entry
            .bucket
            .check()
            .map_err(|not_until| Refusal::Rate(not_until.wait_time_from(self.clock.now())))
    }

    /// Forgets keys idle long enough for their bucket to be full again (forgetting them
    /// changes nothing for their owners).
    pub fn prune(&self) {
        let refill = self.quota.burst_size_replenished_in();
        let mut map = self.lock();
        map.retain(|_, e| e.last_used.elapsed() < refill);
        map.shrink_to_fit();
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn quota(per_sec: u32, burst: u32) -> Quota {
        Quota::per_second(NonZeroU32::new(per_sec).unwrap())
            .allow_burst(NonZeroU32::new(burst).unwrap())
    }

    #[test]
    fn at_the_cap_only_new_keys_are_refused() {
        let l = KeyedLimiter::new(quota(1000, 1000), 3);
        for k in ["a", "b", "c"] {
            assert!(l.check(&k.to_owned()).is_ok());
        }
        assert_eq!(l.check(&"d".to_owned()), Err(Refusal::KeyCap));
        assert_eq!(l.len(), 3, "a refused key is not tracked");
        for _ in 0..10 {
            assert!(l.check(&"a".to_owned()).is_ok(), "known keys keep working");
            assert!(l.check(&"c".to_owned()).is_ok());
        }
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let l = KeyedLimiter::new(quota(1, 2), 10);
        let a = "a".to_owned();
        assert!(l.check(&a).is_ok());
        assert!(l.check(&a).is_ok());
        assert!(matches!(l.check(&a), Err(Refusal::Rate(_))));
        assert!(l.check(&"b".to_owned()).is_ok(), "b is not starved by a");
    }

    #[test]
    fn prune_keeps_keys_whose_bucket_is_not_full_again() {
        // One unit per hour: a key used just now is far from refilled and must stay, or
        // pruning would hand it a fresh burst.
        let hourly = Quota::per_hour(NonZeroU32::new(1).unwrap());
        let l = KeyedLimiter::new(hourly, 10);
        let a = "a".to_owned();
        assert!(l.check(&a).is_ok());
        l.prune();
        assert_eq!(l.len(), 1);
        assert!(matches!(l.check(&a), Err(Refusal::Rate(_))));
    }
}
