//! [`AgentState`]: what the dialer reports about the connection, for `/health`, `/ready` and
//! tests (which wait on it instead of sleeping).

use std::sync::Arc;

use tokio::sync::watch;

/// A point-in-time view of the agent's connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSnapshot {
    /// A session with the hub is established (a `welcome` was received).
    pub connected: bool,
    /// The current (or last) session id from `welcome`.
    pub session_id: Option<String>,
    /// Why the last connection attempt or session ended, if it failed.
    pub last_error: Option<String>,
    /// Sessions established since start.
    pub connects: u64,
    /// Handshakes refused because the hub's pin was not in `server_pins`.
    pub pin_mismatches: u64,
    /// The pin the hub presented at the last pin mismatch.
    pub last_presented_pin: Option<String>,
    /// Certificates renewed (and installed) since start.
    pub renewals: u64,
    /// When the next connection attempt is due, while waiting to reconnect.
    pub next_attempt: Option<std::time::Instant>,
}

/// Shared, observable connection state; cheap to clone behind an [`Arc`].
#[derive(Debug)]
pub struct AgentState {
    tx: watch::Sender<StateSnapshot>,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            tx: watch::Sender::new(StateSnapshot::default()),
        }
    }
}

impl AgentState {
    /// A fresh, disconnected state.
    pub fn new() -> Arc<AgentState> {
        Arc::new(AgentState::default())
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> StateSnapshot {
        self.tx.borrow().clone()
    }

    /// Whether a session is established.
    pub fn is_connected(&self) -> bool {
        self.tx.borrow().connected
    }

    /// Waits until `predicate` holds and returns the snapshot that satisfied it.
    pub async fn wait_for(
        &self,
        mut predicate: impl FnMut(&StateSnapshot) -> bool,
    ) -> StateSnapshot {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we borrow it.
        let result = match rx.wait_for(|s| predicate(s)).await {
            Ok(s) => s.clone(),
            Err(_) => self.snapshot(),
        };
        result
    }

    pub(crate) fn set_connected(&self, session_id: &str) {
        self.tx.send_modify(|s| {
            s.connected = true;
            s.session_id = Some(session_id.to_owned());
            s.last_error = None;
            s.next_attempt = None;
            s.connects += 1;
        });
    }

    pub(crate) fn set_disconnected(&self, error: Option<String>) {
        self.tx.send_modify(|s| {
            s.connected = false;
            if error.is_some() {
                s.last_error = error;
            }
        });
    }

    /// Records that the next attempt comes after `delay` (for `STATUS=` and `/health`).
    pub(crate) fn set_next_attempt(&self, delay: std::time::Duration) {
        self.tx
            .send_modify(|s| s.next_attempt = Some(std::time::Instant::now() + delay));
    }

    pub(crate) fn record_renewal(&self) {
        self.tx.send_modify(|s| s.renewals += 1);
    }

    pub(crate) fn record_pin_mismatch(&self, presented: &str) {
        self.tx.send_modify(|s| {
            s.pin_mismatches += 1;
            s.last_presented_pin = Some(presented.to_owned());
        });
    }
}
