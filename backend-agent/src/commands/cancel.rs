//! Cancelling: the same scope as running the verb on the agent (or admin), the operator rate
//! limit, and a durable `command_cancelled` record naming the actor.

use tracing::warn;

use super::{finish, lock, CommandService, SubmitError};
use crate::audit::events;
use crate::auth::Principal;
use crate::authz::Action;
use crate::store::{CommandRecord, CommandState, StoreError};

impl CommandService {
    /// Cancels `command_id` for `caller`. Unknown and out-of-scope commands are both
    /// [`AuthzError::NotFound`](crate::authz::AuthzError::NotFound) (404). A final command is
    /// returned unchanged and nothing is recorded.
    pub async fn cancel(
        &self,
        caller: &Principal,
        command_id: &str,
    ) -> Result<CommandRecord, SubmitError> {
        let not_found = || format!("unknown command {command_id:?}");
        let Some(rec) = self.store.get_command(command_id).await? else {
            return Err(crate::authz::AuthzError::NotFound(not_found()).into());
        };
        self.check_record(caller, Action::Cancel, &rec, not_found)?;
        self.charge_operator(caller, Some(&rec.verb))?;
        if rec.status.is_final() {
            return Ok(rec);
        }
        // Who cancelled is on disk before the cancel takes effect.
        self.audit
            .durable(events::command_cancelled(&caller.name, &rec))
            .await
            .map_err(SubmitError::Audit)?;
        Ok(self.cancel_unchecked(command_id).await?.unwrap_or(rec))
    }

    /// Cancels a command: a held one at once, a dispatched one by asking its agent.
    async fn cancel_unchecked(
        &self,
        command_id: &str,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let Some(mut rec) = self.store.get_command(command_id).await? else {
            return Ok(None);
        };
        match rec.status {
            CommandState::Pending => {
                if let Some(q) = lock(&self.held).get_mut(&rec.agent_id) {
                    q.retain(|h| h.frame.command_id != command_id);
                }
                finish(
                    &mut rec,
                    CommandState::Cancelled,
                    "cancelled",
                    "cancelled before dispatch",
                );
                if self
                    .store
                    .update_command_if(&rec, CommandState::Pending)
                    .await?
                {
                    self.notify(&rec);
                } else {
                    // Dispatched meanwhile: cancel it on the agent instead.
                    return Box::pin(self.cancel_unchecked(command_id)).await;
                }
            }
            CommandState::Dispatched | CommandState::Running
                if !self.cancel_on_session(&rec.agent_id, command_id) =>
            {
                if let Some(cluster) = self.cluster.get() {
                    // Held by another replica (routed or handed over there).
                    if !cluster.cancel_remote(&rec.agent_id, command_id).await {
                        warn!(command.id = %command_id, "could not cancel on the replica holding the agent");
                    }
                }
            }
            _ => {}
        }
        Ok(Some(rec))
    }
}
