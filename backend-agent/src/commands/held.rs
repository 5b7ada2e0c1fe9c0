//! Commands held for an offline agent (`queue_ttl_ms`): bounded per agent, dispatched when
//! it connects (or at the next sweep), expired at their deadline. In a cluster, handed to
//! the replica the agent attached to (`handover`).

use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::CommandFrame;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{finish, CommandService, Held, SubmitError, MAX_QUEUED_PER_AGENT};
use crate::store::{CommandRecord, CommandState};
use crate::sync::lock;

impl CommandService {
    /// Commands held for offline agents right now (for `/metrics`).
    pub fn held_count(&self) -> usize {
        lock(&self.held).values().map(|q| q.len()).sum()
    }

    pub(super) async fn hold(
        &self,
        record: &mut CommandRecord,
        frame: CommandFrame,
        ttl_ms: u64,
    ) -> Result<(), SubmitError> {
        // Announced before it can be flushed, so `pending` always precedes `dispatched`.
        self.registry.events.command_status(record);
        let held_ok = {
            let mut held = lock(&self.held);
            let queue = held.entry(record.agent_id.clone()).or_default();
            if queue.len() >= MAX_QUEUED_PER_AGENT {
                false
            } else {
                queue.push_back(Held {
                    frame,
                    deadline: Instant::now() + Duration::from_millis(ttl_ms),
                });
                true
            }
        };
        if !held_ok {
            finish(
                record,
                CommandState::Rejected,
                "queue_full",
                "too many commands held for this offline agent",
            );
            self.store.update_command(record).await?;
            self.registry.events.command_status(record);
            return Err(SubmitError::QueueFull(record.agent_id.clone()));
        }
        info!(command.id = %record.command_id, agent.id = %record.agent_id, ttl_ms, "agent offline; command held");
        // The agent may have connected between the lookup and the hold.
        if self.registry.session(&record.agent_id).is_some() {
            let _ = self.connected_tx.try_send(record.agent_id.clone());
        }
        Ok(())
    }

    pub(super) async fn flush_held(&self, agent_id: &str) {
        let Some(session) = self.registry.session(agent_id) else {
            return;
        };
        let queue = lock(&self.held).remove(agent_id).unwrap_or_default();
        for held in queue {
            let Ok(Some(mut record)) = self.store.get_command(&held.frame.command_id).await else {
                continue;
            };
            if record.status != CommandState::Pending {
                continue; // cancelled or expired meanwhile
            }
            if let Err(e) = self.dispatch(&mut record, held.frame, &session, true).await {
                warn!(command.id = %record.command_id, error = %e, "could not dispatch a held command");
                self.notify(&record);
            }
        }
    }

    pub(super) async fn expire_held(self: &Arc<Self>) {
        let waiting: Vec<String> = lock(&self.held).keys().cloned().collect();
        for agent in waiting {
            if self.registry.session(&agent).is_some() {
                self.flush_held(&agent).await;
            }
        }
        let now = Instant::now();
        let expired: Vec<CommandFrame> = {
            let mut held = lock(&self.held);
            let mut out = Vec::new();
            for queue in held.values_mut() {
                queue.retain(|h| {
                    let keep = h.deadline > now;
                    if !keep {
                        out.push(h.frame.clone());
                    }
                    keep
                });
            }
            held.retain(|_, q| !q.is_empty());
            out
        };
        for frame in expired {
            let Ok(Some(mut rec)) = self.store.get_command(&frame.command_id).await else {
                continue;
            };
            if rec.status == CommandState::Pending {
                finish(
                    &mut rec,
                    CommandState::Expired,
                    "queue_ttl_expired",
                    "the agent did not reconnect within queue_ttl_ms",
                );
                if let Ok(true) = self
                    .store
                    .update_command_if(&rec, CommandState::Pending)
                    .await
                {
                    info!(command.id = %rec.command_id, agent.id = %rec.agent_id, "held command expired");
                    self.audit.record(crate::audit::events::command_expired(
                        &rec,
                        "queue_ttl_expired",
                    ));
                    self.notify(&rec);
                }
            }
        }
        self.retry_handovers();
    }
}
