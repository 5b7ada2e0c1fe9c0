//! Background upkeep of the history: commands that were dispatched but never answered end
//! `expired`, and finished commands are pruned by age and count.
//!
//! Both work from the store, not from memory, so they also finish what a crashed or
//! restarted backend left behind.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::{finish, CommandService};
use crate::audit::events;
use crate::clock;
use crate::store::{CommandRecord, CommandState};

/// How often dispatched commands are checked for a missing result.
pub const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// Most unanswered commands expired in one sweep; the rest wait for the next one, so a
/// large backlog after a long outage is worked off without one long store lock.
pub const MAX_EXPIRED_PER_SWEEP: usize = 1000;

impl CommandService {
    /// Expires `dispatched`/`running` commands whose result is overdue: no result by the
    /// time it was dispatched plus its timeout plus `[limits] result_grace_secs`. The agent
    /// kills a command at its timeout and reports it, so past the grace the result is lost
    /// (agent gone, backend restarted while the agent's spool was lost). A result that still
    /// arrives is audited as `late_result` and does not overwrite the record.
    pub(super) async fn expire_unanswered(&self) {
        let unfinished = match self.store.unfinished_commands().await {
            Ok(list) => list,
            Err(e) => {
                warn!(error = %e, "expiry sweep: cannot list unfinished commands");
                return;
            }
        };
        let now = clock::unix_ms();
        let grace = i64::try_from(self.settings.result_grace.as_millis()).unwrap_or(i64::MAX);
        let mut expired = 0;
        for rec in unfinished {
            if expired >= MAX_EXPIRED_PER_SWEEP {
                break;
            }
            if rec.status == CommandState::Pending {
                // `[cluster]`: a pending record no live replica can hold any more (its holder
                // died). A single node expires its own at start (`recover`).
                if self.cluster.get().is_some()
                    && self.is_orphan(&rec, now)
                    && self.expire_orphan(rec).await
                {
                    expired += 1;
                }
                continue;
            }
            if !matches!(rec.status, CommandState::Dispatched | CommandState::Running) {
                continue;
            }
            let budget = i64::try_from(rec.timeout_ms)
                .unwrap_or(i64::MAX)
                .saturating_add(grace);
            // Dispatch is never before creation: a cheap first filter without the events.
            if unix_ms(&rec.created_at).saturating_add(budget) > now {
                continue;
            }
            if self.dispatched_ms(&rec).await.saturating_add(budget) > now {
                continue;
            }
            if self.expire(rec).await {
                expired += 1;
            }
        }
    }

    /// Age past which no replica can still hold a `pending` command in memory: a holder
    /// expires it at its `queue_ttl_ms` deadline, at most `[limits] max_queue_ttl_ms` after
    /// creation; plus the result grace for clocks and sweeps.
    pub fn orphan_age_ms(&self) -> i64 {
        let ttl = i64::try_from(self.settings.max_queue_ttl_ms).unwrap_or(i64::MAX);
        let grace = i64::try_from(self.settings.result_grace.as_millis()).unwrap_or(i64::MAX);
        ttl.saturating_add(grace)
    }

    /// Whether `rec` is `pending` and older than [`CommandService::orphan_age_ms`] at `now`.
    pub(super) fn is_orphan(&self, rec: &CommandRecord, now: i64) -> bool {
        rec.status == CommandState::Pending
            && unix_ms(&rec.created_at).saturating_add(self.orphan_age_ms()) <= now
    }

    /// Expires a `pending` record its (dead) holder can no longer dispatch.
    async fn expire_orphan(&self, mut rec: CommandRecord) -> bool {
        finish(
            &mut rec,
            CommandState::Expired,
            "holder_lost",
            "held for an offline agent by a replica that is gone",
        );
        match self
            .store
            .update_command_if(&rec, CommandState::Pending)
            .await
        {
            Ok(true) => {
                info!(command.id = %rec.command_id, agent.id = %rec.agent_id, "orphaned held command expired");
                self.audit
                    .record(events::command_expired(&rec, "holder_lost"));
                self.notify(&rec);
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!(error = %e, command.id = %rec.command_id, "could not expire a command");
                false
            }
        }
    }

    /// When `rec` was (last) dispatched, from its status events; its creation if unknown.
    async fn dispatched_ms(&self, rec: &CommandRecord) -> i64 {
        let events = self
            .store
            .command_events(&rec.command_id)
            .await
            .unwrap_or_default();
        events
            .iter()
            .rev()
            .find(|(s, _)| *s == CommandState::Dispatched)
            .map_or_else(|| unix_ms(&rec.created_at), |(_, at)| unix_ms(at))
    }

    async fn expire(&self, mut rec: CommandRecord) -> bool {
        let from = rec.status;
        finish(
            &mut rec,
            CommandState::Expired,
            "no_result",
            "no result from the agent within the command's timeout plus the grace period",
        );
        match self.store.update_command_if(&rec, from).await {
            Ok(true) => {
                info!(command.id = %rec.command_id, agent.id = %rec.agent_id, "unanswered command expired");
                self.audit
                    .record(events::command_expired(&rec, "no_result"));
                self.notify(&rec);
                true
            }
            Ok(false) => false, // a result or cancel won the race
            Err(e) => {
                warn!(error = %e, command.id = %rec.command_id, "could not expire a command");
                false
            }
        }
    }

    /// One pruning pass: by age (`retention_days`), then by count (`max_records`). Only
    /// final commands are deleted.
    pub async fn prune_history(&self) {
        if let Some(retention) = self.settings.retention {
            let age_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let cutoff = clock::rfc3339_from_unix_ms(clock::unix_ms().saturating_sub(age_ms));
            match self.store.prune_finished_before(&cutoff).await {
                Ok(0) => {}
                Ok(n) => {
                    info!(deleted = n, "pruned commands past the retention period");
                    self.audit
                        .record(events::history_pruned(n, "retention_days"));
                }
                Err(e) => warn!(error = %e, "history pruning by age failed"),
            }
        }
        if let Some(max) = self.settings.max_records {
            match self.store.prune(max).await {
                Ok(0) => {}
                Ok(n) => {
                    info!(deleted = n, "pruned commands beyond max_records");
                    self.audit.record(events::history_pruned(n, "max_records"));
                }
                Err(e) => warn!(error = %e, "history pruning by count failed"),
            }
        }
    }
}

/// Runs [`CommandService::prune_history`] every `prune_interval` until `shutdown` flips or
/// the service is dropped.
pub(super) fn spawn_pruner(service: Weak<CommandService>, mut shutdown: watch::Receiver<bool>) {
    let Some(interval) = service.upgrade().map(|s| s.settings.prune_interval) else {
        return;
    };
    tokio::spawn(async move {
        // The first pass one interval after start, not at once: start-up is not held up by
        // a large prune, and tests drive `prune_history` themselves without a racing pass.
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = agentmesh_daemon::stopped(&mut shutdown) => break,
                _ = every.tick() => {
                    let Some(s) = service.upgrade() else { break };
                    s.prune_history().await;
                }
            }
        }
    });
}

/// Unix ms of a stored RFC 3339 time; an unreadable one counts as long ago, so a damaged
/// record is expired rather than kept forever.
fn unix_ms(rfc3339: &str) -> i64 {
    clock::unix_ms_from_rfc3339(rfc3339).unwrap_or(0)
}
