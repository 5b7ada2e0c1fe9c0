//! [`MemoryStore`]: the store in a map behind a mutex, with the same semantics as SQLite.
//!
//! Meant for unit tests of other modules; nothing survives the process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use super::enrolment::{
    check_transition, parse_time, prunable, refusal, renewal_refusal, validate_token,
    RenewalRecord, RenewalStart,
};
use super::Labels;
use super::{
    CommandQuery, CommandRecord, CommandState, CommandStore, EnrolmentStore, JobRecord, JoinToken,
    PinRecord, PinState, Redeem, StoreError,
};
use crate::clock;

#[derive(Default)]
struct Inner {
    // Ordered by id: ids are UUIDv7, so this is creation order (as in SQLite's index).
    commands: BTreeMap<String, CommandRecord>,
    events: HashMap<String, Vec<(CommandState, String)>>,
    jobs: HashMap<String, JobRecord>,
    // Enrolment order; pins are never deleted, so `pin_index` positions stay valid.
    pins: Vec<PinRecord>,
    pin_index: HashMap<(String, String), usize>,
    // Agent id → when it was revoked.
    revoked_agents: BTreeMap<String, String>,
    join_tokens: HashMap<String, JoinToken>,
    // Agent id → its latest renewal.
    renewals: HashMap<String, RenewalRecord>,
    // Oldest first, at most CHECKPOINTS_KEPT.
    checkpoints: std::collections::VecDeque<(String, agentmesh_audit::Checkpoint)>,
    agent_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Inner {
    fn pin_state(&self, agent_id: &str, pin: &str) -> Option<PinState> {
        self.pin_index
            .get(&(agent_id.to_owned(), pin.to_owned()))
            .map(|&i| self.pins[i].state)
    }
}

/// An in-memory [`CommandStore`] and [`EnrolmentStore`].
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below completes before it could panic, so a poisoned map is intact.
        crate::sync::lock(&self.inner)
    }
}

impl CommandStore for MemoryStore {
    fn insert_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.commands.contains_key(&rec.command_id) {
            return Err(StoreError::Duplicate(rec.command_id.clone()));
        }
        inner.commands.insert(rec.command_id.clone(), rec.clone());
        inner.events.insert(
            rec.command_id.clone(),
            vec![(rec.status, rec.created_at.clone())],
        );
        Ok(())
    }

    fn update_command_where(
        &self,
        rec: &CommandRecord,
        expected: Option<CommandState>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let stored = inner
            .commands
            .get_mut(&rec.command_id)
            .ok_or_else(|| StoreError::NotFound(rec.command_id.clone()))?;
        if expected.is_some_and(|e| e != stored.status) {
            return Ok(false);
        }
        let changed = stored.status != rec.status;
        stored.status = rec.status;
        stored.exit_code = rec.exit_code;
        stored.stdout.clone_from(&rec.stdout);
        stored.stderr.clone_from(&rec.stderr);
        stored.truncated = rec.truncated;
        stored.started_at.clone_from(&rec.started_at);
        stored.finished_at.clone_from(&rec.finished_at);
        stored.duration_ms = rec.duration_ms;
        stored.error.clone_from(&rec.error);
        if changed {
            inner
                .events
                .entry(rec.command_id.clone())
                .or_default()
                .push((rec.status, clock::now_rfc3339()));
        }
        Ok(true)
    }

    fn get_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        Ok(self.lock().commands.get(id).cloned())
    }

    fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError> {
        Ok(self
            .lock()
            .commands
            .values()
            .rev()
            .filter(|rec| q.matches(rec))
            .take(q.effective_limit())
            .map(|rec| {
                let mut rec = rec.clone();
                if !q.with_output {
                    rec.stdout.clear();
                    rec.stderr.clear();
                }
                rec
            })
            .collect())
    }

    fn command_events(&self, id: &str) -> Result<Vec<(CommandState, String)>, StoreError> {
        Ok(self.lock().events.get(id).cloned().unwrap_or_default())
    }

    fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.jobs.contains_key(&job.job_id) {
            return Err(StoreError::Duplicate(job.job_id.clone()));
        }
        inner.jobs.insert(job.job_id.clone(), job.clone());
        Ok(())
    }

    fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.lock().jobs.get(id).cloned())
    }

    fn unfinished_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
        Ok(self
            .lock()
            .commands
            .values()
            .filter(|rec| !rec.status.is_final())
            .cloned()
            .collect())
    }

    fn prune(&self, keep_newest: usize) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let doomed: Vec<(String, Option<String>)> = inner
            .commands
            .values()
            .rev()
            .filter(|rec| rec.status.is_final())
            .skip(keep_newest)
            .map(|rec| (rec.command_id.clone(), rec.job_id.clone()))
            .collect();
        Ok(delete(&mut inner, doomed))
    }

    fn prune_finished_before(&self, cutoff_rfc3339: &str) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let doomed: Vec<(String, Option<String>)> = inner
            .commands
            .values()
            .filter(|rec| rec.status.is_final())
            .filter(|rec| {
                rec.finished_at
                    .as_deref()
                    .is_some_and(|f| f < cutoff_rfc3339)
            })
            .map(|rec| (rec.command_id.clone(), rec.job_id.clone()))
            .collect();
        Ok(delete(&mut inner, doomed))
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn set_agent_labels(
        &self,
        agent_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.lock()
            .agent_labels
            .insert(agent_id.to_owned(), labels.clone());
        Ok(())
    }

    fn agent_labels(&self) -> Result<Vec<(String, Labels)>, StoreError> {
        Ok(self
            .lock()
            .agent_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Deletes commands with their events, then the jobs they emptied.
fn delete(inner: &mut Inner, doomed: Vec<(String, Option<String>)>) -> usize {
    let mut touched_jobs = HashSet::new();
    for (id, job) in &doomed {
        inner.commands.remove(id);
        inner.events.remove(id);
        touched_jobs.extend(job.clone());
    }
    // Only jobs that lost commands here: a job just created may not have any yet.
    let live: HashSet<&String> = inner
        .commands
        .values()
        .filter_map(|rec| rec.job_id.as_ref())
        .collect();
    let orphans: Vec<String> = touched_jobs
        .into_iter()
        .filter(|job| !live.contains(job))
        .collect();
    for job in orphans {
        inner.jobs.remove(&job);
    }
    doomed.len()
}

impl EnrolmentStore for MemoryStore {
    fn upsert_pin(
        &self,
        agent_id: &str,
        pin: &str,
        state: PinState,
        source: &str,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let key = (agent_id.to_owned(), pin.to_owned());
        if let Some(&i) = inner.pin_index.get(&key) {
            let rec = &mut inner.pins[i];
            check_transition(agent_id, pin, rec.state, state)?;
            if rec.state != state {
                rec.state = state;
                rec.changed_at = clock::now_rfc3339();
            }
            return Ok(());
        }
        let now = clock::now_rfc3339();
        let at = inner.pins.len();
        inner.pins.push(PinRecord {
            agent_id: agent_id.to_owned(),
            pin: pin.to_owned(),
            state,
            source: source.to_owned(),
            created_at: now.clone(),
            changed_at: now,
        });
        inner.pin_index.insert(key, at);
        Ok(())
    }

    fn pins(&self, agent_id: &str) -> Result<Vec<PinRecord>, StoreError> {
        Ok(self
            .lock()
            .pins
            .iter()
            .filter(|p| p.agent_id == agent_id)
            .cloned()
            .collect())
    }

    fn all_pins(&self) -> Result<Vec<PinRecord>, StoreError> {
        Ok(self.lock().pins.clone())
    }

    fn revoke_agent(&self, agent_id: &str) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let now = clock::now_rfc3339();
        let mut changed = 0;
        for rec in inner.pins.iter_mut() {
            if rec.agent_id == agent_id && rec.state != PinState::Revoked {
                rec.state = PinState::Revoked;
                rec.changed_at.clone_from(&now);
                changed += 1;
            }
        }
        inner
            .revoked_agents
            .entry(agent_id.to_owned())
            .or_insert(now);
        inner
            .join_tokens
            .retain(|_, t| t.agent_id != agent_id || t.used_at.is_some());
        Ok(changed)
    }

    fn unrevoke_agent(&self, agent_id: &str) -> Result<(), StoreError> {
        self.lock().revoked_agents.remove(agent_id);
        Ok(())
    }

    fn revoked_agents(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().revoked_agents.keys().cloned().collect())
    }

    fn insert_join_token(&self, t: &JoinToken) -> Result<(), StoreError> {
        validate_token(t)?;
        let mut inner = self.lock();
        if inner.join_tokens.contains_key(&t.token_sha256) {
            return Err(StoreError::Duplicate(t.token_sha256.clone()));
        }
        inner.join_tokens.insert(t.token_sha256.clone(), t.clone());
        Ok(())
    }

    fn redeem_join_token(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
    ) -> Result<Redeem, StoreError> {
        let now = parse_time("now", now_rfc3339)?;
        let mut inner = self.lock();
        let Some(t) = inner.join_tokens.get_mut(token_sha256) else {
            return Ok(Redeem::Unknown);
        };
        if let Some(refused) = refusal(t, agent_id, now)? {
            return Ok(refused);
        }
        t.used_at = Some(now_rfc3339.to_owned());
        Ok(Redeem::Ok(t.clone()))
    }

    fn redeem_join_token_for_pin(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
        pin: &str,
    ) -> Result<Redeem, StoreError> {
        let now = parse_time("now", now_rfc3339)?;
        {
            let inner = self.lock();
            let Some(t) = inner.join_tokens.get(token_sha256) else {
                return Ok(Redeem::Unknown);
            };
            if let Some(refused) = refusal(t, agent_id, now)? {
                return Ok(refused);
            }
            if inner.revoked_agents.contains_key(agent_id) {
                return Ok(Redeem::AgentRevoked);
            }
            if let Some(state) = inner.pin_state(agent_id, pin) {
                check_transition(agent_id, pin, state, PinState::Active)?;
            }
        }
        // Checked above under the same rules; tests of this store are single-threaded.
        self.upsert_pin(agent_id, pin, PinState::Active, "join_token")?;
        self.redeem_join_token(token_sha256, agent_id, now_rfc3339)
    }

    fn renewal(&self, agent_id: &str) -> Result<Option<RenewalRecord>, StoreError> {
        Ok(self.lock().renewals.get(agent_id).cloned())
    }

    fn start_renewal(
        &self,
        record: &RenewalRecord,
        min_interval_ms: i64,
    ) -> Result<RenewalStart, StoreError> {
        let agent_id = record.agent_id.as_str();
        let last = self.lock().renewals.get(agent_id).cloned();
        if let Some(refused) =
            renewal_refusal(last.as_ref(), record.requested_at_ms, min_interval_ms)
        {
            return Ok(refused);
        }
        if let Some(state) = self.lock().pin_state(agent_id, &record.new_pin) {
            check_transition(agent_id, &record.new_pin, state, PinState::Active)?;
        }
        let superseded = last
            .filter(|l| !l.completed && l.new_pin != record.new_pin)
            .map(|l| l.new_pin);
        if let Some(unused) = &superseded {
            if self.lock().pin_state(agent_id, unused) == Some(PinState::Active) {
                self.upsert_pin(agent_id, unused, PinState::Retired, "renewal")?;
            }
        }
        self.upsert_pin(agent_id, &record.new_pin, PinState::Active, "renewal")?;
        let mut stored = record.clone();
        stored.completed = false;
        self.lock().renewals.insert(agent_id.to_owned(), stored);
        Ok(RenewalStart::Started { superseded })
    }

    fn complete_renewal(
        &self,
        agent_id: &str,
        pin_in_use: &str,
    ) -> Result<Option<String>, StoreError> {
        let old = {
            let mut inner = self.lock();
            match inner.renewals.get_mut(agent_id) {
                Some(r) if !r.completed && r.new_pin == pin_in_use => {
                    r.completed = true;
                    r.old_pin.clone()
                }
                _ => return Ok(None),
            }
        };
        if self.lock().pin_state(agent_id, &old) != Some(PinState::Active) {
            return Ok(None);
        }
        self.upsert_pin(agent_id, &old, PinState::Retired, "renewal")?;
        Ok(Some(old))
    }

    fn prune_join_tokens(&self, now_rfc3339: &str) -> Result<usize, StoreError> {
        let now = parse_time("now", now_rfc3339)?;
        let mut inner = self.lock();
        let before = inner.join_tokens.len();
        inner
            .join_tokens
            .retain(|_, t| !prunable(&t.expires_at, t.used_at.as_deref(), now));
        Ok(before - inner.join_tokens.len())
    }
}

impl super::CheckpointStore for MemoryStore {
    fn put_replica_checkpoint(
        &self,
        replica: &str,
        checkpoint: &agentmesh_audit::Checkpoint,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let kept = inner
            .checkpoints
            .iter()
            .filter(|(r, _)| r == replica)
            .count();
        if kept >= super::CHECKPOINTS_KEPT {
            if let Some(oldest) = inner.checkpoints.iter().position(|(r, _)| r == replica) {
                inner.checkpoints.remove(oldest);
            }
        }
        inner
            .checkpoints
            .push_back((replica.to_owned(), checkpoint.clone()));
        Ok(())
    }

    fn latest_replica_checkpoint(
        &self,
        replica: &str,
    ) -> Result<Option<agentmesh_audit::Checkpoint>, StoreError> {
        let inner = self.lock();
        let latest = inner.checkpoints.iter().rev().find(|(r, _)| r == replica);
        Ok(latest.map(|(_, c)| c.clone()))
    }

    fn latest_checkpoints(&self) -> Result<Vec<(String, agentmesh_audit::Checkpoint)>, StoreError> {
        let inner = self.lock();
        let mut latest: Vec<(String, agentmesh_audit::Checkpoint)> = Vec::new();
        for (r, c) in inner.checkpoints.iter().rev() {
            if !latest.iter().any(|(seen, _)| seen == r) {
                latest.push((r.clone(), c.clone()));
            }
        }
        Ok(latest)
    }
}

/// The memory store keeps no fleet audit records (single node only).
impl super::AuditMirrorStore for MemoryStore {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        crate::store::tests::conformance(&MemoryStore::new());
    }

    #[test]
    fn enrolment_conformance() {
        crate::store::enrolment::tests::conformance(&MemoryStore::new());
    }
}
