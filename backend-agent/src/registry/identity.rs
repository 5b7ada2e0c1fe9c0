//! The identity rule, and keeping one agent's identity in step with the shared store when
//! another replica changed it (`agent.<X>.identity`, `docs/cluster.md`).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};

use super::{AgentRecord, LiveSession, Registry};
use crate::store::{PinRecord, PinState};

/// Why an authenticated certificate is still refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityRejection {
    /// No enrolment for this id, or this pin is not among its pins.
    PinNotEnrolled,
    /// The pin (or the whole agent) was revoked.
    Revoked,
    /// The pin was replaced by a renewed certificate.
    Retired,
}

impl IdentityRejection {
    /// Stable reason code for logs, metrics and audit.
    pub fn code(self) -> &'static str {
        match self {
            IdentityRejection::PinNotEnrolled => "pin_not_enrolled",
            IdentityRejection::Revoked => "revoked",
            IdentityRejection::Retired => "pin_retired",
        }
    }
}

/// The identity rule: the pin is enrolled for the agent, and neither it nor the agent is
/// revoked or retired.
pub(super) fn identity_of(
    record: Option<&AgentRecord>,
    pin: &str,
) -> Result<(), IdentityRejection> {
    let record = record.ok_or(IdentityRejection::PinNotEnrolled)?;
    if record.revoked || record.revoked_pins.contains(pin) {
        return Err(IdentityRejection::Revoked);
    }
    if record.retired_pins.contains(pin) {
        return Err(IdentityRejection::Retired);
    }
    if record.pins.iter().any(|p| p == pin) {
        Ok(())
    } else {
        Err(IdentityRejection::PinNotEnrolled)
    }
}

/// One agent's identity as the shared store holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredIdentity {
    /// Active pins, in enrolment order.
    pub active: Vec<String>,
    /// Pins replaced by a renewal.
    pub retired: Vec<String>,
    /// Revoked pins.
    pub revoked: Vec<String>,
    /// The whole agent is revoked.
    pub agent_revoked: bool,
}

impl StoredIdentity {
    /// Sorts `pins` (all of one agent) by state.
    pub fn from_pins<'a>(
        pins: impl IntoIterator<Item = &'a PinRecord>,
        agent_revoked: bool,
    ) -> Self {
        let mut out = StoredIdentity {
            agent_revoked,
            ..StoredIdentity::default()
        };
        for p in pins {
            match p.state {
                PinState::Active => out.active.push(p.pin.clone()),
                PinState::Retired => out.retired.push(p.pin.clone()),
                PinState::Revoked => out.revoked.push(p.pin.clone()),
            }
        }
        out
    }
}

/// Told when this replica changed an agent's identity or authoritative labels, so the other
/// replicas catch up (installed once by the cluster link; without one nothing is told).
pub trait IdentityNotifier: Send + Sync + 'static {
    /// `agent_id`'s pins or revocation changed in the store; `labels`: its authoritative
    /// labels were set to these.
    fn identity_changed(&self, agent_id: &str, labels: Option<&BTreeMap<String, String>>);
}

/// The once-set notifier slot (`Debug` without showing the notifier).
#[derive(Default)]
pub(super) struct NotifierSlot(OnceLock<Arc<dyn IdentityNotifier>>);

impl std::fmt::Debug for NotifierSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "NotifierSlot(set)"
        } else {
            "NotifierSlot(unset)"
        })
    }
}

impl Registry {
    /// Installs the notifier the change sites reach through [`Registry::announce_identity`];
    /// a second call is ignored.
    pub fn set_identity_notifier(&self, notifier: Arc<dyn IdentityNotifier>) {
        let _ = self.notifier.0.set(notifier);
    }

    /// Tells the other replicas that `agent_id`'s pins or revocation changed (a no-op
    /// without a cluster). Call after the store holds the change.
    pub fn announce_identity(&self, agent_id: &str) {
        if let Some(n) = self.notifier.0.get() {
            n.identity_changed(agent_id, None);
        }
    }

    /// Tells the other replicas the authoritative labels `agent_id` now has (a no-op
    /// without a cluster). Call after the store holds them.
    pub fn announce_labels(&self, agent_id: &str, labels: &BTreeMap<String, String>) {
        if let Some(n) = self.notifier.0.get() {
            n.identity_changed(agent_id, Some(labels));
        }
    }

    /// Replaces `agent_id`'s pin sets and revoked flag with the store's. Returns the live
    /// session to close 4004 when its pin (or the agent) is now revoked; that session is
    /// taken out at once, as by [`Registry::revoke_agent`]. A session whose pin was retired
    /// stays open, as on a single node (nothing more is sent on it; its agent reconnects
    /// with the renewed certificate). An unknown agent with nothing stored stays unknown.
    pub fn replace_identity(&self, agent_id: &str, stored: StoredIdentity) -> Option<LiveSession> {
        let mut agents = self.lock();
        let empty = stored.active.is_empty()
            && stored.retired.is_empty()
            && stored.revoked.is_empty()
            && !stored.agent_revoked;
        if empty && !agents.contains_key(agent_id) {
            return None;
        }
        let record = agents.entry(agent_id.to_owned()).or_default();
        record.revoked_pins = stored.revoked.into_iter().collect::<HashSet<_>>();
        record.retired_pins = stored
            .retired
            .into_iter()
            .filter(|p| !record.revoked_pins.contains(p))
            .collect();
        record.pins = stored
            .active
            .into_iter()
            .filter(|p| !record.revoked_pins.contains(p) && !record.retired_pins.contains(p))
            .collect();
        record.revoked = stored.agent_revoked;
        let pin = record.pin.as_deref()?;
        let revoked = record.revoked || record.revoked_pins.contains(pin);
        if !revoked || record.session.is_none() {
            return None;
        }
        record.connected_since_ms = None;
        let session = record.session.take();
        self.events.agent_disconnected(agent_id, "revoked");
        session
    }

    /// Sets labels another replica stored for `agent_id`, unless this replica's own
    /// `[[agents]] labels` name the agent (the config wins, as at start).
    pub fn apply_stored_labels(&self, agent_id: &str, labels: BTreeMap<String, String>) {
        let mut agents = self.lock();
        let record = agents.entry(agent_id.to_owned()).or_default();
        if !record.labels_from_config {
            record.enrolled_labels = Some(labels);
        }
    }

    /// Sets `agent_id`'s authoritative labels from this replica's `[[agents]] labels`:
    /// labels other replicas store for it are not applied over them.
    pub fn set_config_labels(&self, agent_id: &str, labels: BTreeMap<String, String>) {
        let mut agents = self.lock();
        let record = agents.entry(agent_id.to_owned()).or_default();
        record.enrolled_labels = Some(labels);
        record.labels_from_config = true;
    }
}
