//! Failure injection for the writer's unit tests: a full disk without a filesystem.

use std::sync::atomic::AtomicBool;

/// Switches a [`crate::segment::Segment`] checks before touching the disk.
#[derive(Debug, Default)]
pub(crate) struct Fault {
    /// Every write writes half its bytes, then fails (as `ENOSPC` mid-write would).
    pub(crate) fail_writes: AtomicBool,
    /// Every fsync fails.
    pub(crate) fail_syncs: AtomicBool,
}
