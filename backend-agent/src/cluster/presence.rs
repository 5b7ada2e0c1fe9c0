//! Who holds which agent: the dispatch subscription of each held agent, supersede (4003)
//! and revocation (4004) across replicas.

use std::sync::Arc;

use agentmesh_protocol::{close, HelloFrame};
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

/// Largest `hello` carried in an `attached` announcement; a bigger one is left out (its
/// labels and verbs then reach the other replicas with their next fleet list).
pub const MAX_ANNOUNCED_HELLO: usize = 256 * 1024;

/// Body of `agent.<X>.attached`.
#[derive(Debug, Serialize, Deserialize)]
struct Attached {
    agent_id: String,
    replica_id: String,
    session_id: String,
    attached_ms: i64,
    /// The session's `hello` (labels, verbs), so label scopes and selectors on every replica
    /// see the agent; absent when over [`MAX_ANNOUNCED_HELLO`].
    #[serde(default)]
    hello: Option<HelloFrame>,
}

/// Body of `agent.<X>.detached`.
#[derive(Debug, Serialize, Deserialize)]
struct Detached {
    agent_id: String,
    replica_id: String,
    session_id: String,
}

/// Body of `agent.<X>.revoke`.
#[derive(Debug, Serialize, Deserialize)]
struct Revoke {
    agent_id: String,
    replica_id: String,
}

/// `hello` as announced: without what only the holder needs.
fn announced_hello(hello: &HelloFrame) -> HelloFrame {
    HelloFrame {
        pending_results: Vec::new(),
        nonce: None,
        ..hello.clone()
    }
}

impl Cluster {
    /// A session of `hello.agent_id` attached here: subscribe to its dispatch subject
    /// (presence) and tell the other replicas, which close any older session of it (4003)
    /// and take its `hello` labels and verbs.
    pub fn attached(self: &Arc<Self>, hello: &HelloFrame, session_id: &str) {
        let agent_id = hello.agent_id.as_str();
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
            hello: Some(announced_hello(hello)),
        };
        if let Ok(mut payload) = serde_json::to_vec(&body) {
            if payload.len() > MAX_ANNOUNCED_HELLO {
                debug!(agent.id = %agent_id, bytes = payload.len(), "hello too large to announce");
                let body = Attached {
                    hello: None,
                    ..body
                };
                payload = serde_json::to_vec(&body).unwrap_or_default();
            }
            self.publish(self.agent_subject(agent_id, "attached"), payload);
        }
    }

    /// The session `session_id` of `agent_id` ended here: stop answering for it and tell
    /// the other replicas (their event streams say `agent_disconnected`).
    pub fn detached(&self, agent_id: &str, session_id: &str) {
        if self.forget_held(agent_id, session_id) {
            let body = Detached {
                agent_id: agent_id.to_owned(),
                replica_id: self.replica_id.clone(),
                session_id: session_id.to_owned(),
            };
            if let Ok(payload) = serde_json::to_vec(&body) {
                self.publish(self.agent_subject(agent_id, "detached"), payload);
            }
        }
    }

    /// Stops answering for `session_id` of `agent_id`; whether it was the one held here.
    fn forget_held(&self, agent_id: &str, session_id: &str) -> bool {
        let mut held = crate::sync::lock(&self.held);
        let current = held
            .get(agent_id)
            .is_some_and(|h| h.session_id == session_id);
        if current {
            held.remove(agent_id);
        }
        current
    }

    pub(super) fn on_detached(&self, payload: &[u8]) {
        let Ok(d) = serde_json::from_slice::<Detached>(payload) else {
            debug!("malformed detached announcement ignored");
            return;
        };
        if d.replica_id != self.replica_id {
            self.registry.remote_detached(&d.agent_id, &d.session_id);
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
        let (older, newer_here) = {
            let held = crate::sync::lock(&self.held);
            let here = held.get(&a.agent_id);
            (
                here.filter(|h| h.attached_ms <= a.attached_ms)
                    .map(|h| h.session_id.clone()),
                here.is_some_and(|h| h.attached_ms > a.attached_ms),
            )
        };
        if let Some(hello) = a.hello.filter(|h| h.agent_id == a.agent_id && !newer_here) {
            self.registry
                .set_remote_hello(hello, older.is_some(), Some(&a.session_id));
        }
        let Some(old_session) = older else { return };
        if let Some(session) = self.registry.session(&a.agent_id) {
            if session.session_id == old_session {
                info!(agent.id = %a.agent_id, by = %a.replica_id, "superseded by a session on another replica");
                session.request_close(close::SUPERSEDED, "superseded by a newer session");
            }
        }
        self.forget_held(&a.agent_id, &old_session);
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
