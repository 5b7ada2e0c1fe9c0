//! `[cluster]`: commands held here for an offline agent follow it to the replica it attaches
//! to. When agent X attaches on replica B (its `attached` announcement, or the periodic
//! sweep finding X still held here), this replica sends X's held commands one by one, in
//! order, to B over `agent.<X>.dispatch` ([`Handover`]). B dispatches each on X's session
//! with the same command id: a compare-and-set `pending` → `dispatched` in the shared store,
//! so exactly one replica ever dispatches it, however often it is retried. A command leaves
//! this replica's queue only once B answers [`HandedOver::Taken`]; on any failure it stays
//! here until its deadline and is retried at the next announcement or sweep.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{CommandService, SubmitError};
use crate::clock;
use crate::cluster::{Cluster, HandedOver, Handover};
use crate::store::CommandState;
use crate::sync::lock;

/// Agents whose held commands are being handed over at once on one replica; an agent
/// beyond it waits for the next sweep.
pub const MAX_HANDOVERS_IN_FLIGHT: usize = 64;
/// The sweep asks again for an agent still held here no sooner than this after its last try.
pub const HANDOVER_RETRY: Duration = Duration::from_secs(2);
/// Agents the sweep retries per tick at most (each try is one NATS request).
pub const MAX_RETRIES_PER_SWEEP: usize = 32;

/// Handover bookkeeping: bounded by [`MAX_HANDOVERS_IN_FLIGHT`] and by the agents held here.
#[derive(Default)]
pub(super) struct Handovers {
    /// Agents with a handover task running → asked again while it ran (it then goes on).
    running: Mutex<HashMap<String, bool>>,
    /// When the sweep last tried an agent (pruned to the agents still held here).
    tried: Mutex<HashMap<String, Instant>>,
}

impl CommandService {
    /// Agent `agent_id` attached on another replica: hand over what is held here for it.
    pub fn on_remote_attached(self: &Arc<Self>, agent_id: &str) {
        if lock(&self.held).contains_key(agent_id) {
            self.start_handover(agent_id);
        }
    }

    /// From the sweep: agents held here with no session here are tried again (no
    /// responders means still offline everywhere), each at most every [`HANDOVER_RETRY`].
    pub(super) fn retry_handovers(self: &Arc<Self>) {
        // While NATS is down nothing can be handed over; the first sweep after it is back
        // tries every agent held here (their last tries are older than the retry interval).
        if !self.cluster.get().is_some_and(|c| c.connected()) {
            return;
        }
        let now = Instant::now();
        let due: Vec<String> = {
            let held = lock(&self.held);
            let mut tried = lock(&self.handovers.tried);
            tried.retain(|agent, _| held.contains_key(agent));
            let due: Vec<String> = held
                .keys()
                .filter(|a| tried.get(*a).is_none_or(|t| now - *t >= HANDOVER_RETRY))
                .take(MAX_RETRIES_PER_SWEEP)
                .cloned()
                .collect();
            for agent in &due {
                tried.insert(agent.clone(), now);
            }
            due
        };
        for agent in due {
            // Connected here: `flush_held` dispatches them (no registry lock under `held`).
            if self.registry.session(&agent).is_none() {
                self.start_handover(&agent);
            }
        }
    }

    /// Starts one handover task for `agent_id` unless one runs (then it goes round again,
    /// keeping the order) or [`MAX_HANDOVERS_IN_FLIGHT`] do (then the sweep retries).
    fn start_handover(self: &Arc<Self>, agent_id: &str) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        {
            let mut running = lock(&self.handovers.running);
            if let Some(again) = running.get_mut(agent_id) {
                *again = true;
                return;
            }
            if running.len() >= MAX_HANDOVERS_IN_FLIGHT {
                debug!(agent.id = %agent_id, "too many handovers in flight; left to the sweep");
                return;
            }
            running.insert(agent_id.to_owned(), false);
        }
        let me = Arc::downgrade(self);
        let agent = agent_id.to_owned();
        tokio::spawn(async move { run_handover(me, cluster, agent).await });
    }

    /// Hands the held commands of `agent_id` over in order until the queue is empty or a
    /// try fails. Each try is bounded by the cluster's request timeout.
    async fn hand_over_held(&self, cluster: &Cluster, agent_id: &str) {
        loop {
            if cluster.stopping() || self.registry.session(agent_id).is_some() {
                return; // a local session: `flush_held` dispatches them here
            }
            let next = {
                let held = lock(&self.held);
                let now = Instant::now();
                held.get(agent_id)
                    .and_then(|q| q.iter().find(|h| h.deadline > now))
                    .map(|h| (h.frame.clone(), h.deadline - now))
            };
            // Expired ones are skipped (never handed over); the sweep expires them here.
            let Some((frame, left)) = next else { return };
            let left_ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
            let command_id = frame.command_id.clone();
            let handover = Handover {
                from: cluster.replica_id().to_owned(),
                agent_id: agent_id.to_owned(),
                frame,
                deadline_ms: clock::unix_ms().saturating_add(left_ms),
            };
            match cluster.hand_over(&handover).await {
                HandedOver::Taken => {
                    let mut held = lock(&self.held);
                    if let Some(q) = held.get_mut(agent_id) {
                        q.retain(|h| h.frame.command_id != command_id);
                        if q.is_empty() {
                            held.remove(agent_id);
                        }
                    }
                    info!(command.id = %command_id, agent.id = %agent_id, "held command handed over to the replica holding the agent");
                }
                HandedOver::NotHere => return,
                HandedOver::Failed { code, message } => {
                    warn!(command.id = %command_id, agent.id = %agent_id, %code, error = %message, "handover failed; still held here");
                    return;
                }
            }
        }
    }

    /// Serves a handover from another replica: dispatches the command on the session held
    /// here with its id, only if the shared store still says `pending`.
    pub async fn serve_handover(&self, handover: &Handover) -> HandedOver {
        let Some(session) = self.registry.session(&handover.agent_id) else {
            return HandedOver::NotHere;
        };
        if clock::unix_ms() >= handover.deadline_ms {
            // Its holder expires it at its deadline.
            return HandedOver::failed("queue_ttl_expired", "past its queue_ttl_ms deadline");
        }
        let mut record = match self.store.get_command(&handover.frame.command_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return HandedOver::Taken, // pruned: nothing left to hold
            Err(e) => return HandedOver::failed(SubmitError::Store(e).code(), "store error"),
        };
        if record.agent_id != handover.agent_id || record.verb != handover.frame.verb {
            return HandedOver::failed("bad_request", "the handover does not match the record");
        }
        if record.status != CommandState::Pending {
            return HandedOver::Taken; // dispatched by an earlier try, cancelled or expired
        }
        let frame = handover.frame.clone();
        match self.dispatch(&mut record, frame, &session, true).await {
            Ok(()) => {
                debug!(command.id = %record.command_id, from = %handover.from, "handed-over command dispatched");
                HandedOver::Taken
            }
            Err(SubmitError::Offline(_)) => HandedOver::NotHere,
            Err(e) if record.status.is_final() => {
                // Refused here (the agent's send queue is full), as a local flush would be.
                warn!(command.id = %record.command_id, error = %e, "could not dispatch a handed-over command");
                self.notify(&record);
                HandedOver::Taken
            }
            Err(e) => HandedOver::failed(e.code(), e.to_string()),
        }
    }
}

/// One agent's handover task: goes round again while it was asked again meanwhile, then
/// leaves the running set. Ends early when the service is gone.
async fn run_handover(service: Weak<CommandService>, cluster: Arc<Cluster>, agent: String) {
    loop {
        let Some(s) = service.upgrade() else { return };
        s.hand_over_held(&cluster, &agent).await;
        let mut running = lock(&s.handovers.running);
        match running.get_mut(&agent) {
            Some(again) if *again && !cluster.stopping() => *again = false,
            _ => {
                running.remove(&agent);
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
