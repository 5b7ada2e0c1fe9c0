//! The command service's side of `[cluster]` routing (see `crate::cluster`): forwarding a
//! command for an agent held elsewhere, serving one forwarded here, cancels of commands
//! dispatched to an agent held elsewhere, and waking waiters when another replica finishes
//! a command.

use std::sync::Arc;

use agentmesh_protocol::HubFrame;

use super::{CommandService, SubmitError, SubmitRequest};
use crate::auth::Principal;
use crate::authz::{Action, AgentScope, Ids, Subject};
use crate::cluster::{Cluster, RoutedCall};
use crate::store::CommandRecord;
use crate::sync::lock;

impl CommandService {
    /// Joins a cluster: commands for agents held by other replicas are routed there.
    pub fn set_cluster(self: &Arc<Self>, cluster: Arc<Cluster>) {
        cluster.bind(self);
        let _ = self.cluster.set(cluster);
    }

    /// The cluster link, when `[cluster]` is configured.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Routes a command for an agent not connected here. `None`: single node, or no
    /// replica holds the agent (the caller goes on as for an offline agent).
    pub(super) async fn route_remote(
        &self,
        caller: &Principal,
        requested_by: &str,
        job_id: Option<&str>,
        req: &SubmitRequest,
    ) -> Option<Result<CommandRecord, SubmitError>> {
        let cluster = self.cluster.get()?;
        let routed = cluster
            .route(&RoutedCall::new(caller, requested_by, job_id, req))
            .await;
        if let Some(Ok(rec)) = &routed {
            // The holder's event stream says so too; this one serves the caller's.
            self.registry.events.command_status(rec);
        }
        routed
    }

    /// A command for an agent this replica does not know (enrolled through another
    /// replica since this one started): charged here, authorised by its holder.
    pub(super) async fn route_unknown(
        &self,
        caller: &Principal,
        req: SubmitRequest,
    ) -> Result<CommandRecord, SubmitError> {
        if self.cluster.get().is_some() {
            self.charge_operator(caller, Some(&req.verb))?;
            if let Some(routed) = self.route_remote(caller, &caller.name, None, &req).await {
                return routed;
            }
        }
        Err(SubmitError::UnknownAgent(req.agent_id))
    }

    /// A command forwarded by another replica for an agent held here: authorised again
    /// (with the caller's scopes), then validated, audited, recorded and dispatched as a
    /// local one. `None`: the agent is not (or no longer) connected here.
    pub async fn serve_routed(
        &self,
        call: &RoutedCall,
    ) -> Result<Option<CommandRecord>, SubmitError> {
        let Some(target) = self.registry.command_target(&call.agent_id, &call.verb) else {
            return Ok(None);
        };
        if target.session.is_none() && !target.refused {
            return Ok(None);
        }
        let caller = call.principal();
        let subject = Subject {
            verb: Some(&call.verb),
            agent: AgentScope::Labels(&target.labels),
        };
        let ids = Ids {
            agent: Some(&call.agent_id),
            command: None,
        };
        let action = if call.job_id.is_some() {
            Action::FanOut
        } else {
            Action::Submit
        };
        self.authz.check(&caller, action, &subject, ids, || {
            format!("unknown agent {:?}", call.agent_id)
        })?;
        self.submit_to(
            &call.requested_by,
            call.job_id.clone(),
            target,
            call.request(),
        )
        .await
        .map(Some)
    }

    /// Another replica cancelled `command_id`, dispatched to `agent_id` held here: asks the
    /// agent to stop it. `false`: not connected here, or its send queue is full.
    pub fn cancel_on_session(&self, agent_id: &str, command_id: &str) -> bool {
        let Some(session) = self.registry.session(agent_id) else {
            return false;
        };
        let frame = HubFrame::Cancel {
            command_id: command_id.to_owned(),
        };
        session.tx.try_send(Box::new(frame)).is_ok()
    }

    /// Another replica finished `command_id`: wake the waiters here (if any) with the
    /// stored record.
    pub async fn wake_remote(&self, command_id: &str) {
        if !lock(&self.waiters).contains_key(command_id) {
            return;
        }
        let Ok(Some(rec)) = self.store.get_command(command_id).await else {
            return;
        };
        if !rec.status.is_final() {
            return;
        }
        // Waited for here, so requested here: this replica's event stream (and a fan-out
        // job's progress) learns the outcome too.
        self.registry.events.command_status(&rec);
        if let Some(list) = lock(&self.waiters).remove(command_id) {
            for tx in list {
                let _ = tx.send(rec.clone());
            }
        }
    }
}

/// Refusal codes of another replica answered as they are (see the API's error mapping).
const PASSED_THROUGH: [&str; 6] = [
    "verb_not_advertised",
    "invalid_args",
    "invalid_queue_ttl",
    "rate_limited",
    "audit_unavailable",
    "store_unavailable",
];

impl SubmitError {
    /// A refusal answered by another replica, by its stable code.
    pub fn remote(code: &str, message: String, agent: &str) -> Self {
        use crate::authz::AuthzError;
        match code {
            "unknown_agent" => SubmitError::UnknownAgent(agent.to_owned()),
            "forbidden" => SubmitError::Denied(AuthzError::Forbidden(message)),
            "not_found" => SubmitError::Denied(AuthzError::NotFound(message)),
            "agent_revoked" => SubmitError::Revoked(agent.to_owned()),
            "agent_offline" => SubmitError::Offline(agent.to_owned()),
            "queue_full" => SubmitError::QueueFull(agent.to_owned()),
            _ => match PASSED_THROUGH.iter().find(|c| **c == code) {
                Some(code) => SubmitError::Remote { code, message },
                None => SubmitError::ClusterUnavailable(message),
            },
        }
    }
}
