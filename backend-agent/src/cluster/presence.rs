//! Who holds which agent: the dispatch subscription of each held agent, supersede (4003)
//! and revocation (4004) across replicas.

use std::sync::Arc;

use agentmesh_protocol::close;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::Cluster;
use crate::clock;

/// One agent this replica holds: its session and the task serving its dispatch subject.
pub(super) struct Held {
    session_id: String,
    attached_ms: i64,
    task: JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Dropping the task drops its subscriber, which unsubscribes: presence ends.
        self.task.abort();
    }
}

/// Body of `agent.<X>.attached`.
#[derive(Debug, Serialize, Deserialize)]
struct Attached {
    agent_id: String,
    replica_id: String,
    session_id: String,
    attached_ms: i64,
}

/// Body of `agent.<X>.revoke`.
#[derive(Debug, Serialize, Deserialize)]
struct Revoke {
    agent_id: String,
    replica_id: String,
}

impl Cluster {
    /// A session of `agent_id` attached here: subscribe to its dispatch subject (presence)
    /// and tell the other replicas, which close any older session of it (4003).
    pub fn attached(self: &Arc<Self>, agent_id: &str, session_id: &str) {
        let attached_ms = clock::unix_ms();
        let me = self.clone();
        let (agent, session) = (agent_id.to_owned(), session_id.to_owned());
        let subject = self.agent_subject(agent_id, "dispatch");
        let task = tokio::spawn(async move {
            let mut sub = match me.client.queue_subscribe(subject, "holders".into()).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(agent.id = %agent, error = %e, "cannot announce a held agent");
                    return;
                }
            };
            let mut stop = me.shutdown.clone();
            loop {
                let msg = tokio::select! {
                    _ = agentmesh_daemon::stopped(&mut stop) => break,
                    m = sub.next() => m,
                };
                let Some(msg) = msg else { break };
                let Ok(permit) = me.routed.clone().acquire_owned().await else {
                    break;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    me.serve_routed(msg).await;
                    drop(permit);
                });
            }
        });
        let held = Held {
            session_id: session.clone(),
            attached_ms,
            task,
        };
        // A replaced entry (a newer local session) is dropped, which ends its task.
        crate::sync::lock(&self.held).insert(agent_id.to_owned(), held);
        let body = Attached {
            agent_id: agent_id.to_owned(),
            replica_id: self.replica_id.clone(),
            session_id: session,
            attached_ms,
        };
        if let Ok(payload) = serde_json::to_vec(&body) {
            self.publish(self.agent_subject(agent_id, "attached"), payload);
        }
    }

    /// The session `session_id` of `agent_id` ended here: stop answering for it.
    pub fn detached(&self, agent_id: &str, session_id: &str) {
        let mut held = crate::sync::lock(&self.held);
        if held
            .get(agent_id)
            .is_some_and(|h| h.session_id == session_id)
        {
            held.remove(agent_id);
        }
    }

    /// Agents this replica holds, for `agents.list`.
    pub(super) fn held_ids(&self) -> Vec<String> {
        crate::sync::lock(&self.held).keys().cloned().collect()
    }

    /// Tells every replica that `agent_id` was revoked (the store already says so).
    pub fn broadcast_revoke(&self, agent_id: &str) {
        let body = Revoke {
            agent_id: agent_id.to_owned(),
            replica_id: self.replica_id.clone(),
        };
        if let Ok(payload) = serde_json::to_vec(&body) {
            self.publish(self.agent_subject(agent_id, "revoke"), payload);
        }
    }

    pub(super) fn on_attached(&self, payload: &[u8]) {
        let Ok(a) = serde_json::from_slice::<Attached>(payload) else {
            debug!("malformed attached announcement ignored");
            return;
        };
        if a.replica_id == self.replica_id {
            return;
        }
        if let Some(commands) = self.commands() {
            commands.on_remote_attached(&a.agent_id); // held commands follow the agent
        }
        let older = {
            let held = crate::sync::lock(&self.held);
            held.get(&a.agent_id)
                .filter(|h| h.attached_ms <= a.attached_ms)
                .map(|h| h.session_id.clone())
        };
        let Some(old_session) = older else { return };
        if let Some(session) = self.registry.session(&a.agent_id) {
            if session.session_id == old_session {
                info!(agent.id = %a.agent_id, by = %a.replica_id, "superseded by a session on another replica");
                session.request_close(close::SUPERSEDED, "superseded by a newer session");
            }
        }
        self.detached(&a.agent_id, &old_session);
    }

    pub(super) fn on_revoke(&self, payload: &[u8]) {
        let Ok(r) = serde_json::from_slice::<Revoke>(payload) else {
            debug!("malformed revoke announcement ignored");
            return;
        };
        if r.replica_id == self.replica_id {
            return;
        }
        // The shared store holds the revocation already; this replica's memory catches up
        // and the session it holds (if any) closes 4004.
        if let Some(Some(session)) = self.registry.revoke_agent(&r.agent_id) {
            info!(agent.id = %r.agent_id, by = %r.replica_id, "revoked on another replica: closing");
            session.request_close(close::REVOKED, "revoked");
        }
    }
}
