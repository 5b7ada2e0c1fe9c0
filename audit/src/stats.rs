//! Process-wide fsync latency of every audit log in this process, for `/metrics`: fixed
//! buckets of atomics, no lock and no allocation on the write path.
//!
//! Process-wide rather than per log because a daemon has one log; tests that run several
//! backends in one process see their sum.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the fsync latency buckets; slower fsyncs count only in `+Inf`.
pub const FSYNC_BUCKETS_SECS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Latency histogram of audit fsyncs.
#[derive(Debug)]
pub struct FsyncStats {
    buckets: [AtomicU64; FSYNC_BUCKETS_SECS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// The fsyncs of every audit log in this process.
pub static FSYNC_STATS: FsyncStats = FsyncStats::new();

/// A copy of [`FsyncStats`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct FsyncSnapshot {
    /// `(upper bound in seconds, fsyncs in this bucket only)`, not cumulative.
    pub buckets: Vec<(f64, u64)>,
    /// All fsyncs, including those slower than the last bound.
    pub count: u64,
    /// Total time spent in fsync, seconds.
    pub sum_secs: f64,
}

impl FsyncStats {
    /// An empty histogram.
    pub const fn new() -> FsyncStats {
        FsyncStats {
            buckets: [const { AtomicU64::new(0) }; FSYNC_BUCKETS_SECS.len()],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one fsync that took `took`.
    pub fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = FSYNC_BUCKETS_SECS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> FsyncSnapshot {
        FsyncSnapshot {
            buckets: FSYNC_BUCKETS_SECS
                .iter()
                .zip(&self.buckets)
                .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_secs: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl Default for FsyncStats {
    fn default() -> FsyncStats {
        FsyncStats::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_fsync_once() {
        let stats = FsyncStats::new();
        stats.record(Duration::from_micros(100));
        stats.record(Duration::from_millis(3));
        stats.record(Duration::from_secs(10));
        let s = stats.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 1));
        assert_eq!(
            s.buckets.iter().map(|b| b.1).sum::<u64>(),
            2,
            "10 s is only in +Inf"
        );
        assert!(s.sum_secs > 10.0);
    }
}
