//! Poison-tolerant locking.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering from poisoning: a panic while one request held the lock must not
/// turn every later request into a panic too. Each caller says why its data is still
/// consistent after such a panic.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
