//! The fleet-wide agent list: every replica answers `agents.list` with the agents it holds
//! (in chunks of [`CHUNK`]); the asking replica lays them over its own list.
//!
//! Each gathered view also updates what this replica knows of agents held elsewhere (their
//! `hello` labels and verbs, see [`crate::registry::Registry::set_remote_hello`]), so label
//! lists, label selectors and label scopes here match them like agents held here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use agentmesh_protocol::{HelloFrame, VerbSpec, PROTOCOL_VERSION};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tracing::debug;

use super::Cluster;
use crate::registry::AgentView;

/// Agents per answer message (well under NATS's default 1 MiB payload).
pub const CHUNK: usize = 200;
/// Longest a list waits for the other replicas.
pub const GATHER_LIMIT: Duration = Duration::from_secs(2);
/// Answer messages read at most for one list (bounds a misbehaving peer).
pub const MAX_ANSWERS: usize = 10_000;

/// One chunk of one replica's answer.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    replica_id: String,
    agents: Vec<Value>,
    last: bool,
}

/// What the other replicas hold.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Agent id → (replica, its view there).
    pub held: HashMap<String, (String, Value)>,
    /// Live members that did not answer in time (their agents may be missing).
    pub missing: Vec<String>,
}

impl Cluster {
    /// Asks every live replica which agents it holds; replicas that do not answer within
    /// [`GATHER_LIMIT`] are named in [`Fleet::missing`].
    pub async fn gather(&self) -> Fleet {
        let mut expected: HashSet<String> = self.members().into_iter().collect();
        let mut fleet = Fleet::default();
        if expected.is_empty() || !self.connected() {
            fleet.missing = expected.into_iter().collect();
            return fleet;
        }
        let inbox = self.client.new_inbox();
        let Ok(mut sub) = self.client.subscribe(inbox.clone()).await else {
            fleet.missing = expected.into_iter().collect();
            return fleet;
        };
        let sent = self
            .client
            .publish_with_reply(self.subject("agents.list"), inbox, Vec::new().into())
            .await;
        let deadline = Instant::now() + GATHER_LIMIT.min(self.timeout);
        let mut answers = 0;
        while sent.is_ok() && !expected.is_empty() && answers < MAX_ANSWERS {
            let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await else {
                break;
            };
            answers += 1;
            let Ok(answer) = serde_json::from_slice::<Answer>(&msg.payload) else {
                continue;
            };
            if answer.replica_id == self.replica_id {
                continue;
            }
            for view in answer.agents {
                if let Some(hello) = hello_of(&view) {
                    let id = hello.agent_id.clone();
                    if self.registry.set_remote_hello(hello, false, None) {
                        if let Some(session) = view.get("session_id").and_then(Value::as_str) {
                            self.registry.note_remote_session(&id, session);
                        }
                    }
                }
                if let Some(id) = view.get("id").and_then(Value::as_str) {
                    fleet
                        .held
                        .insert(id.to_owned(), (answer.replica_id.clone(), view.clone()));
                }
            }
            if answer.last {
                expected.remove(&answer.replica_id);
            }
        }
        fleet.missing = expected.into_iter().collect();
        fleet.missing.sort();
        fleet
    }

    /// `local` (this replica's view, already scoped to the caller and filtered by labels;
    /// read after the gather, so agents held elsewhere match with their current labels) with
    /// every agent held by another replica shown as it is there (`replica` names the holder),
    /// then filtered by `connected`; also the live replicas that did not answer.
    pub async fn fleet_list(
        &self,
        local: impl FnOnce() -> Vec<AgentView>,
        connected: Option<bool>,
    ) -> (Vec<Value>, Vec<String>) {
        let mut fleet = self.gather().await;
        let local = local();
        let mut out = Vec::with_capacity(local.len());
        for view in local {
            let mut value = match fleet.held.remove(&view.id) {
                Some((replica, mut remote)) if !view.connected => {
                    remote["replica"] = Value::String(replica);
                    remote
                }
                _ => {
                    let here = view.connected;
                    let mut v = serde_json::to_value(&view).unwrap_or(Value::Null);
                    if here {
                        v["replica"] = Value::String(self.replica_id.clone());
                    }
                    v
                }
            };
            let is_connected = value.get("connected").and_then(Value::as_bool) == Some(true);
            if connected.is_none_or(|c| c == is_connected) && !value.is_null() {
                if let Some(obj) = value.as_object_mut() {
                    obj.entry("replica").or_insert(Value::Null);
                }
                out.push(value);
            }
        }
        (out, fleet.missing)
    }

    /// Learns the labels and verbs of every agent the other replicas hold (at start and each
    /// time the NATS link comes back: `attached` announcements sent meanwhile were missed).
    pub async fn learn_fleet(&self) {
        let fleet = self.gather().await;
        debug!(
            agents = fleet.held.len(),
            missing = fleet.missing.len(),
            "learned the agents other replicas hold"
        );
    }

    /// Answers `agents.list` with the connected agents this replica holds.
    pub(super) async fn answer_list(&self, msg: async_nats::Message) {
        let Some(reply) = msg.reply else { return };
        let views: Vec<Value> = self
            .held_ids()
            .iter()
            .filter_map(|id| self.registry.get(id))
            .filter(|v| v.connected)
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect();
        let mut chunks: Vec<Vec<Value>> = views.chunks(CHUNK).map(<[Value]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let n = chunks.len();
        for (i, agents) in chunks.into_iter().enumerate() {
            let answer = Answer {
                replica_id: self.replica_id.clone(),
                agents,
                last: i + 1 == n,
            };
            let Ok(payload) = serde_json::to_vec(&answer) else {
                return;
            };
            if let Err(e) = self.client.publish(reply.clone(), payload.into()).await {
                debug!(error = %e, "agent list answer not sent");
                return;
            }
        }
    }
}

/// The `hello` a holder's view of an agent stands for. Its labels are the holder's effective
/// labels (`hello` labels with authoritative ones laid over); where this replica knows the
/// authoritative labels, those are what scopes match anyway.
fn hello_of(view: &Value) -> Option<HelloFrame> {
    #[derive(Deserialize)]
    struct Shown {
        id: String,
        #[serde(default)]
        site: Option<String>,
        #[serde(default)]
        hostname: Option<String>,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        verbs: Vec<VerbSpec>,
    }
    let shown = Shown::deserialize(view).ok()?;
    Some(HelloFrame {
        protocol: PROTOCOL_VERSION,
        agent_id: shown.id,
        version: shown.version.unwrap_or_default(),
        site: shown.site.unwrap_or_default(),
        hostname: shown.hostname.unwrap_or_default(),
        labels: shown.labels,
        verbs: shown.verbs,
        max_concurrency: 1,
        pending_results: Vec::new(),
        nonce: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holders_view_stands_for_its_hello() {
        let view = serde_json::json!({
            "id": "edge-1", "connected": true, "site": "lab", "hostname": "h1",
            "labels": {"env": "prod"}, "verbs": [{"name": "ping"}], "version": "1.2.3",
            "replica": "r2"
        });
        let hello = hello_of(&view).unwrap_or_else(|| panic!("no hello from {view}"));
        assert_eq!(hello.agent_id, "edge-1");
        assert_eq!(hello.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(hello.verbs.len(), 1);
        assert_eq!(hello.site, "lab");
        assert!(hello_of(&serde_json::json!({"connected": true})).is_none());
        assert!(hello_of(&serde_json::json!({"id": 3})).is_none());
    }
}
