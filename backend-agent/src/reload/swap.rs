//! [`Swap`]: a value a config reload replaces whole while readers keep the one they hold.

use std::sync::{Arc, RwLock};

/// A shared value replaced whole on reload; readers take a cheap [`Arc`] snapshot, so a
/// request sees either the old value or the new one, never a mix.
#[derive(Debug, Default)]
pub struct Swap<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Swap<T> {
    /// Holds `value` until the first [`Swap::store`].
    pub fn new(value: T) -> Self {
        Swap {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        // A poisoned lock still guards a whole `Arc`: replacing it is a single store.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the value; holders of the old snapshot keep it until they drop it.
    pub fn store(&self, value: T) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::Swap;

    #[test]
    fn a_snapshot_outlives_the_swap() {
        let s = Swap::new(1);
        let old = s.load();
        s.store(2);
        assert_eq!((*old, *s.load()), (1, 2));
    }
}
