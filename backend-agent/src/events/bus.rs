//! The operator event bus behind `GET /api/v1/events`: agent connects and disconnects,
//! command status changes and fan-out progress, fanned out to bounded per-subscriber queues.
//!
//! - **Publishing never blocks.** [`EventBus::publish`] takes one short lock, appends to the
//!   resume ring and `try_send`s to every subscriber. A subscriber whose queue
//!   ([`SUBSCRIBER_QUEUE`] events) is full is dropped on the spot: its stream ends, the
//!   `agentmesh_events_dropped` counter goes up, and the hub and commands never wait for it.
//! - **Resume.** The last [`RING_CAPACITY`] events stay in a ring; a subscriber that names the
//!   last id it saw gets the ones after it. When that id is older than the ring (or from
//!   another process), the stream starts with `reset`: events were lost, re-read the lists.
//! - **Ids** are strictly increasing and start at the process's start time in microseconds,
//!   so ids of an earlier process are always older than the ring (a `reset`, not a silent gap).
//! - **Scope** is checked per subscriber when it reads (see `sse`); the bus only carries the
//!   agent, verb and job targets each event is about.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::warn;

use crate::clock;
use crate::store::CommandRecord;
use crate::sync::lock;

/// Events kept for `Last-Event-ID` resume.
pub const RING_CAPACITY: usize = 1024;
/// Events queued per subscriber; a subscriber whose queue is full is dropped.
pub const SUBSCRIBER_QUEUE: usize = 256;
/// Subscribers at once; more are refused (503).
pub const MAX_SUBSCRIBERS: usize = 256;
/// Fan-out jobs whose progress is tallied at once; at the bound the oldest is forgotten (its
/// later results publish `command_status` but no more `job_progress`).
pub const MAX_TRACKED_JOBS: usize = 1024;

/// Which `?types=` family an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `agent_connected`, `agent_disconnected`.
    Agent,
    /// `command_status`.
    Command,
    /// `job_progress`.
    Job,
}

impl Family {
    /// Parses a `?types=` item.
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "agent" => Some(Family::Agent),
            "command" => Some(Family::Command),
            "job" => Some(Family::Job),
            _ => None,
        }
    }
}

/// One published event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Sequence number (the SSE `id`).
    pub id: u64,
    /// The SSE `event` type.
    pub kind: &'static str,
    /// Its family.
    pub family: Family,
    /// The agent it is about (scope), if one.
    pub agent_id: Option<String>,
    /// The verb it is about (scope), if one.
    pub verb: Option<String>,
    /// A job's targets (scope: all must be visible); shared by every event of the job.
    pub targets: Arc<[String]>,
    /// The `data` line: one-line JSON.
    pub data: String,
}

impl Event {
    /// The event in SSE wire form, blank line included.
    pub fn to_sse(&self) -> String {
        format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            self.id, self.kind, self.data
        )
    }
}

/// What a new subscriber starts with.
pub struct Subscription {
    /// `Some(reason)`: events after the requested id were lost; send `reset` first.
    pub reset: Option<&'static str>,
    /// The id a `reset` carries: the last id before `replay` starts.
    pub reset_id: u64,
    /// Buffered events after the requested id.
    pub replay: Vec<Arc<Event>>,
    /// Live events.
    pub rx: mpsc::Receiver<Arc<Event>>,
    /// Set when the bus dropped this subscriber (queue full) or closed.
    pub dropped: Arc<AtomicBool>,
    key: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.shared.state).subscribers.remove(&self.key);
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// [`MAX_SUBSCRIBERS`] are connected.
    #[error("too many event subscribers (at most {MAX_SUBSCRIBERS}); retry later")]
    Busy,
    /// The backend is shutting down.
    #[error("the backend is shutting down")]
    Closed,
}

struct Subscriber {
    tx: mpsc::Sender<Arc<Event>>,
    dropped: Arc<AtomicBool>,
}

struct State {
    next_id: u64,
    ring: VecDeque<Arc<Event>>,
    subscribers: HashMap<u64, Subscriber>,
    next_key: u64,
    closed: bool,
    jobs: HashMap<String, progress::JobTally>,
    job_order: VecDeque<String>,
}

struct Shared {
    state: Mutex<State>,
    published: AtomicU64,
    dropped: AtomicU64,
}

/// The bus; cheap to share (one per backend, held by the registry).
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        let start = u64::try_from(clock::unix_ms()).unwrap_or(0) * 1000;
        EventBus::starting_at(start)
    }
}

impl EventBus {
    /// A bus whose first event gets id `first` (tests use small numbers).
    pub fn starting_at(first: u64) -> Self {
        EventBus {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    next_id: first.max(1),
                    ring: VecDeque::with_capacity(RING_CAPACITY),
                    subscribers: HashMap::new(),
                    next_key: 0,
                    closed: false,
                    jobs: HashMap::new(),
                    job_order: VecDeque::new(),
                }),
                published: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Subscribes, replaying buffered events after `last_id` (none when `None`).
    pub fn subscribe(&self, last_id: Option<u64>) -> Result<Subscription, SubscribeError> {
        let mut st = lock(&self.shared.state);
        if st.closed {
            return Err(SubscribeError::Closed);
        }
        if st.subscribers.len() >= MAX_SUBSCRIBERS {
            return Err(SubscribeError::Busy);
        }
        let newest = st.next_id - 1;
        let oldest = st.ring.front().map_or(st.next_id, |e| e.id);
        let (reset, reset_id, replay) = match last_id {
            None => (None, newest, Vec::new()),
            Some(last) if last > newest => (Some("unknown_event_id"), newest, Vec::new()),
            Some(last) if last.saturating_add(1) < oldest => (
                Some("events_lost"),
                oldest - 1,
                st.ring.iter().cloned().collect(),
            ),
            Some(last) => (
                None,
                last,
                st.ring.iter().filter(|e| e.id > last).cloned().collect(),
            ),
        };
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let dropped = Arc::new(AtomicBool::new(false));
        let key = st.next_key;
        st.next_key += 1;
        st.subscribers.insert(
            key,
            Subscriber {
                tx,
                dropped: dropped.clone(),
            },
        );
        Ok(Subscription {
            reset,
            reset_id,
            replay,
            rx,
            dropped,
            key,
            shared: self.shared.clone(),
        })
    }

    /// Publishes an event; never blocks (see the module docs for the drop rule).
    pub fn publish(&self, kind: &'static str, family: Family, scope: Scope<'_>, data: Value) {
        let mut st = lock(&self.shared.state);
        self.push(&mut st, kind, family, scope, data);
    }

    fn push(
        &self,
        st: &mut State,
        kind: &'static str,
        family: Family,
        scope: Scope<'_>,
        data: Value,
    ) {
        let (agent_id, verb, targets) = scope;
        let event = Arc::new(Event {
            id: st.next_id,
            kind,
            family,
            agent_id: agent_id.map(str::to_owned),
            verb: verb.map(str::to_owned),
            targets,
            data: data.to_string(),
        });
        st.next_id += 1;
        if st.ring.len() >= RING_CAPACITY {
            st.ring.pop_front();
        }
        st.ring.push_back(event.clone());
        let mut slow = Vec::new();
        for (key, sub) in &st.subscribers {
            if let Err(mpsc::error::TrySendError::Full(_)) = sub.tx.try_send(event.clone()) {
                slow.push(*key);
            }
        }
        for key in slow {
            if let Some(sub) = st.subscribers.remove(&key) {
                sub.dropped.store(true, Ordering::Relaxed);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(
                    queue = SUBSCRIBER_QUEUE,
                    "event stream reader fell behind; its stream is closed"
                );
            }
        }
        self.shared.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends every stream and refuses new subscribers (shutdown: open streams would hold the
    /// HTTP server's graceful stop).
    pub fn close(&self) {
        let mut st = lock(&self.shared.state);
        st.closed = true;
        for (_, sub) in st.subscribers.drain() {
            sub.dropped.store(true, Ordering::Relaxed);
        }
    }

    /// Live subscribers.
    pub fn subscribers(&self) -> usize {
        lock(&self.shared.state).subscribers.len()
    }

    /// Events published by this process.
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// Subscribers dropped for falling behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// `agent_connected`, with the labels as the API shows them (enrolment labels over the
    /// `hello` ones).
    pub fn agent_connected(
        &self,
        hello: Option<&agentmesh_protocol::HelloFrame>,
        labels: &std::collections::BTreeMap<String, String>,
        addr: &str,
    ) {
        let Some(hello) = hello else { return };
        let id = hello.agent_id.as_str();
        let data = json!({
            "agent_id": id, "hostname": hello.hostname, "site": hello.site,
            "labels": labels, "version": hello.version, "remote_addr": addr,
            "at": clock::now_rfc3339(),
        });
        self.publish(
            "agent_connected",
            Family::Agent,
            (Some(id), None, none()),
            data,
        );
    }

    /// `agent_disconnected`.
    pub fn agent_disconnected(&self, id: &str, reason: &str) {
        let data = json!({"agent_id": id, "reason": reason, "at": clock::now_rfc3339()});
        self.publish(
            "agent_disconnected",
            Family::Agent,
            (Some(id), None, none()),
            data,
        );
    }

    /// `command_status` for the record as it is now; a final record of a job also
    /// publishes that job's `job_progress`.
    pub fn command_status(&self, rec: &CommandRecord) {
        let data = json!({
            "command_id": rec.command_id, "agent_id": rec.agent_id, "verb": rec.verb,
            "status": rec.status.as_str(), "job_id": rec.job_id, "exit_code": rec.exit_code,
            "at": clock::now_rfc3339(),
        });
        let scope = (Some(rec.agent_id.as_str()), Some(rec.verb.as_str()), none());
        self.publish("command_status", Family::Command, scope, data);
        if let (Some(job), true) = (&rec.job_id, rec.status.is_final()) {
            self.job_target_done(job, rec);
        }
    }
}

/// What an event is about, for scope checks: (agent, verb, job targets).
pub type Scope<'a> = (Option<&'a str>, Option<&'a str>, Arc<[String]>);

/// No job targets.
fn none() -> Arc<[String]> {
    Arc::from(Vec::new())
}

#[path = "progress.rs"]
mod progress;

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
