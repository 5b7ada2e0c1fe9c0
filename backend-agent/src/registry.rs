//! The agent registry: who is enrolled (pins, revocations) and who is connected right now.
//!
//! One map behind a `std::sync::Mutex`; every critical section is short and never awaits.
//! Live sessions are reached through their bounded outbound queue.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use agentmesh_protocol::{HelloFrame, HubFrame, VerbSpec};
use tokio::sync::{mpsc, watch};

use crate::clock;

mod identity;
mod remote;
mod view;
use identity::identity_of;
pub use identity::{IdentityNotifier, IdentityRejection, StoredIdentity};
use view::view;
pub use view::{AgentFilter, AgentView};

/// State a live session shares with the registry without taking the map lock.
#[derive(Debug, Default)]
pub struct SessionShared {
    /// Unix ms of the last message (any kind) from the agent.
    pub last_seen_ms: AtomicI64,
}

impl SessionShared {
    /// Records activity now.
    pub fn touch(&self) {
        self.last_seen_ms.store(clock::unix_ms(), Ordering::Relaxed);
    }
}

/// The registry's handle on a live session.
#[derive(Debug, Clone)]
pub struct LiveSession {
    /// Unique id of the session.
    pub session_id: String,
    /// Bounded queue of frames into the session task (boxed: an idle session's channel
    /// allocates its first block of slots up front, so small slots keep idle sessions small).
    pub tx: mpsc::Sender<Box<HubFrame>>,
    /// Asks the session to close with a code and reason (supersede, revoke).
    pub close: Arc<watch::Sender<Option<(u16, String)>>>,
    /// Activity shared with the session task.
    pub shared: Arc<SessionShared>,
}

impl LiveSession {
    /// Asks the session task to close with `code`; it sends the close frame and detaches.
    pub fn request_close(&self, code: u16, reason: &str) {
        self.close.send_replace(Some((code, reason.to_owned())));
    }
}

/// What the command path needs to know about one agent.
#[derive(Debug, Clone)]
pub struct CommandTarget {
    /// The live session, if connected.
    pub session: Option<LiveSession>,
    /// The verb's schema from the last `hello`, if advertised.
    pub spec: Option<VerbSpec>,
    /// Authoritative labels: the enrolment labels when an admin set them, else the labels
    /// of the last `hello`. Scopes are checked against these.
    pub labels: BTreeMap<String, String>,
    /// Whether the agent ever said `hello` (so its verbs are known).
    pub ever_connected: bool,
    /// The agent (or the pin of its session) is revoked or retired: nothing may be sent.
    pub refused: bool,
}

#[derive(Debug, Default)]
struct AgentRecord {
    pins: Vec<String>,
    retired_pins: HashSet<String>,
    revoked_pins: HashSet<String>,
    revoked: bool,
    hello: Option<HelloFrame>,
    pin: Option<String>,
    remote_addr: Option<String>,
    connected_since_ms: Option<i64>,
    last_seen_ms: Option<i64>,
    session: Option<LiveSession>,
    /// Labels an admin set at enrolment (`[[agents]] labels`, the enrolment API); `None`:
    /// never set, and the `hello` labels are all there is.
    enrolled_labels: Option<BTreeMap<String, String>>,
    /// The session another replica announced holding (`[cluster]`), until it announces its end.
    remote_session: Option<String>,
    /// `enrolled_labels` come from this replica's `[[agents]] labels`.
    labels_from_config: bool,
}

impl AgentRecord {
    /// The labels scopes and selectors match: the enrolment labels when set (a `hello`
    /// cannot widen them), else the `hello` labels.
    fn scope_labels(&self) -> BTreeMap<String, String> {
        match (&self.enrolled_labels, &self.hello) {
            (Some(enrolled), _) => enrolled.clone(),
            (None, Some(h)) => h.labels.clone(),
            (None, None) => BTreeMap::new(),
        }
    }

    /// `hello` labels with the enrolment labels laid over them (for display).
    fn merged_labels(&self) -> BTreeMap<String, String> {
        let mut out = self
            .hello
            .as_ref()
            .map(|h| h.labels.clone())
            .unwrap_or_default();
        if let Some(enrolled) = &self.enrolled_labels {
            out.extend(enrolled.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    fn scope_matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let have = self.scope_labels();
        labels.iter().all(|(k, v)| have.get(k) == Some(v))
    }

    /// Revoked, or no active pin left: never a command target.
    fn refused(&self) -> bool {
        self.revoked || self.pins.is_empty()
    }

    /// The live session, unless its certificate's pin was revoked or retired since it
    /// connected (such a session is being closed; nothing more is sent on it).
    fn usable_session(&self) -> Option<LiveSession> {
        let pin = self.pin.as_deref()?;
        if self.refused() || !self.pins.iter().any(|p| p == pin) {
            return None;
        }
        self.session.clone()
    }
}

/// Enrolments and live sessions.
#[derive(Debug, Default)]
pub struct Registry {
    agents: Mutex<HashMap<String, AgentRecord>>,
    /// The operator event stream (`GET /api/v1/events`); connects, disconnects and command
    /// changes are published here.
    pub events: crate::events::bus::EventBus,
    /// Told of identity and label changes made here (the cluster link, once set).
    notifier: identity::NotifierSlot,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, AgentRecord>> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters more than refusing service would, so recover from poisoning.
        crate::sync::lock(&self.agents)
    }

    /// Enrols `pin` for `id` (idempotent); a previously revoked pin stays revoked.
    pub fn enrol(&self, id: &str, pin: &str) {
        let mut agents = self.lock();
        let record = agents.entry(id.to_owned()).or_default();
        if record.revoked_pins.contains(pin) {
            return;
        }
        record.retired_pins.remove(pin);
        if !record.pins.iter().any(|p| p == pin) {
            record.pins.push(pin.to_owned());
        }
    }

    /// Clears the agent-level revocation (an admin enrolled a fresh pin); revoked pins stay
    /// revoked.
    pub fn unrevoke(&self, id: &str) {
        if let Some(r) = self.lock().get_mut(id) {
            r.revoked = false;
        }
    }

    /// Marks one pin revoked.
    pub fn revoke_pin(&self, id: &str, pin: &str) {
        let mut agents = self.lock();
        let record = agents.entry(id.to_owned()).or_default();
        record.pins.retain(|p| p != pin);
        record.retired_pins.remove(pin);
        record.revoked_pins.insert(pin.to_owned());
    }

    /// Retires a pin (replaced by a renewal): it can no longer connect.
    pub fn retire_pin(&self, id: &str, pin: &str) {
        let mut agents = self.lock();
        let record = agents.entry(id.to_owned()).or_default();
        record.pins.retain(|p| p != pin);
        if !record.revoked_pins.contains(pin) {
            record.retired_pins.insert(pin.to_owned());
        }
    }

    /// Sets the authoritative labels of `id` (from `[[agents]] labels` or the enrolment
    /// API); they replace earlier enrolment labels.
    pub fn set_enrolled_labels(&self, id: &str, labels: BTreeMap<String, String>) {
        let mut agents = self.lock();
        let record = agents.entry(id.to_owned()).or_default();
        record.enrolled_labels = Some(labels);
        record.labels_from_config = false;
    }

    /// Forgets the authoritative labels of `id` (its `[[agents]] labels` left the config);
    /// its `hello` labels apply again.
    pub fn clear_enrolled_labels(&self, id: &str) {
        if let Some(record) = self.lock().get_mut(id) {
            record.enrolled_labels = None;
            record.labels_from_config = false;
        }
    }

    /// The enrolment labels of `id`, if an admin set any.
    pub fn enrolled_labels(&self, id: &str) -> Option<BTreeMap<String, String>> {
        self.lock().get(id).and_then(|r| r.enrolled_labels.clone())
    }

    /// The labels scopes are checked against for `id`; `None` when unknown.
    pub fn scope_labels(&self, id: &str) -> Option<BTreeMap<String, String>> {
        self.lock().get(id).map(AgentRecord::scope_labels)
    }

    /// Active pins of `id`.
    pub fn active_pins(&self, id: &str) -> Vec<String> {
        self.lock()
            .get(id)
            .map(|r| r.pins.clone())
            .unwrap_or_default()
    }

    /// Revokes every pin of `id`, refuses it from now on, and returns its live session (the
    /// caller closes it with 4004). `None` in the outer option: unknown agent.
    pub fn revoke_agent(&self, id: &str) -> Option<Option<LiveSession>> {
        let mut agents = self.lock();
        let record = agents.get_mut(id)?;
        let pins: Vec<String> = record.pins.drain(..).collect();
        record.revoked_pins.extend(pins);
        let retired: Vec<String> = record.retired_pins.drain().collect();
        record.revoked_pins.extend(retired);
        record.revoked = true;
        // Taken out at once: a revoked agent is never listed as connected, not even while
        // its session task is still sending the close frame.
        record.connected_since_ms = None;
        let session = record.session.take();
        if session.is_some() {
            self.events.agent_disconnected(id, "revoked");
        }
        Some(session)
    }

    /// Marks the whole agent revoked (loaded from the store at start).
    pub fn mark_revoked(&self, id: &str) {
        self.lock().entry(id.to_owned()).or_default().revoked = true;
    }

    /// Whether `pin` may connect as `id`.
    pub fn check_identity(&self, id: &str, pin: &str) -> Result<(), IdentityRejection> {
        identity_of(self.lock().get(id), pin)
    }

    /// Records a new live session and returns the one it supersedes, if any.
    ///
    /// The identity check runs again here, under the registry lock: a connection admitted
    /// before a revocation (or a renewal retiring its pin) that says `hello` after it is
    /// refused and never listed. `revoke_agent` takes the same lock, so either it sees this
    /// session and closes it, or this sees the revocation.
    pub fn attach(
        &self,
        hello: HelloFrame,
        pin: &str,
        remote_addr: &str,
        session: LiveSession,
    ) -> Result<Option<LiveSession>, IdentityRejection> {
        let now = clock::unix_ms();
        let mut agents = self.lock();
        identity_of(agents.get(&hello.agent_id), pin)?;
        let record = agents.entry(hello.agent_id.clone()).or_default();
        record.hello = Some(hello);
        let labels = record.merged_labels();
        self.events
            .agent_connected(record.hello.as_ref(), &labels, remote_addr);
        record.pin = Some(pin.to_owned());
        record.remote_addr = Some(remote_addr.to_owned());
        record.connected_since_ms = Some(now);
        record.last_seen_ms = Some(now);
        record.remote_session = None;
        Ok(record.session.replace(session))
    }

    /// Forgets a session if it is still the current one for `id`.
    pub fn detach(&self, id: &str, session_id: &str) -> bool {
        let mut agents = self.lock();
        let Some(record) = agents.get_mut(id) else {
            return false;
        };
        match &record.session {
            Some(s) if s.session_id == session_id => {
                record.last_seen_ms = Some(s.shared.last_seen_ms.load(Ordering::Relaxed));
                record.session = None;
                record.connected_since_ms = None;
                // Superseded by a session another replica announced: still connected.
                if record.remote_session.is_none() {
                    self.events.agent_disconnected(id, "session_closed");
                }
                true
            }
            _ => false,
        }
    }

    /// The live session of `id`, if connected.
    pub fn session(&self, id: &str) -> Option<LiveSession> {
        self.lock().get(id).and_then(|r| r.session.clone())
    }

    /// Number of live sessions.
    pub fn connected_count(&self) -> usize {
        self.lock().values().filter(|r| r.session.is_some()).count()
    }

    /// Whether `id` is known (enrolled or seen).
    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// One agent's view.
    pub fn get(&self, id: &str) -> Option<AgentView> {
        self.lock().get(id).map(|r| view(id, r))
    }

    /// Agents matching `filter`, sorted by id.
    pub fn list(&self, filter: &AgentFilter) -> Vec<AgentView> {
        let agents = self.lock();
        let mut out: Vec<AgentView> = agents
            .iter()
            .filter(|(_, r)| filter.connected.is_none_or(|c| c == r.session.is_some()))
            .filter(|(_, r)| r.scope_matches(&filter.labels))
            .map(|(id, r)| view(id, r))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// What a command for `id` needs, read under one lock: the live session (only while its
    /// pin is still active), the verb's schema from the last `hello`, the authoritative
    /// labels, and whether the identity is revoked or retired. `None` when unknown.
    pub fn command_target(&self, id: &str, verb: &str) -> Option<CommandTarget> {
        let agents = self.lock();
        let record = agents.get(id)?;
        let hello = record.hello.as_ref();
        Some(CommandTarget {
            session: record.usable_session(),
            spec: hello.and_then(|h| h.verbs.iter().find(|v| v.name == verb).cloned()),
            labels: record.scope_labels(),
            ever_connected: hello.is_some(),
            refused: record.refused(),
        })
    }

    /// Ids of agents whose authoritative labels include all of `labels` (empty = every
    /// known agent); revoked agents and agents without an active pin are never included.
    pub fn ids_matching(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        let agents = self.lock();
        let mut ids: Vec<String> = agents
            .iter()
            .filter(|(_, r)| !r.refused() && r.scope_matches(labels))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Live sessions of every agent (for drain on shutdown).
    pub fn live_sessions(&self) -> Vec<LiveSession> {
        self.lock()
            .values()
            .filter_map(|r| r.session.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
