//! Scale-out: routing between backend replicas over NATS (`[cluster]`, `docs/cluster.md`).
//!
//! Subjects live under `agentmesh.<name>.`:
//! - `agent.<X>.dispatch` (request/reply, queue group `holders`): subscribed by the replica
//!   holding agent X's session, for as long as it holds it. Presence *is* this interest: a
//!   request nobody listens to comes back "no responders" at once (agent not connected).
//!   It also carries handovers `{"handover": …}`: a command another replica held for X while
//!   X was offline, dispatched here with the same id (see `commands::handover`); and
//!   cancels `{"cancel": …}` of a command dispatched to X, passed on to X's session.
//! - `agent.<X>.attached` `{replica_id, session_id, attached_ms}`: a replica that attached X
//!   tells the others; one holding an older session of X closes it 4003.
//!   It carries the session's `hello` (labels, verbs) so label scopes and selectors on every
//!   replica match X, and event streams elsewhere say `agent_connected`.
//! - `agent.<X>.detached` `{replica_id, session_id}`: that session ended (event streams
//!   elsewhere say `agent_disconnected`).
//! - `agent.<X>.revoke`: X was revoked on some replica; the holder closes it 4004.
//! - `agent.<X>.identity` `{agent_id, replica_id, labels?}`: X's pins, revocation or
//!   authoritative labels changed on some replica; the others reload X (`identity.rs`).
//! - `command.<id>.done`: command `<id>` reached a final state in the shared store; a replica
//!   with a waiter for it reads the record and wakes the waiter (no polling).
//! - `replica.<id>.heartbeat` every [`HEARTBEAT`]: membership with a lease of [`LEASE`].
//! - `agents.list` (request, every replica answers): the agents each replica holds.
//!
//! Everything here is best effort on top of the shared store, which stays the truth: a lost
//! `done` leaves a waiter to its deadline, never a wrong record.

mod fleet;
mod identity;
mod presence;
mod route;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::commands::CommandService;
use crate::config::ClusterConfig;
use crate::registry::Registry;

pub use identity::MAX_IDENTITY_REFRESHES;
pub use route::{HandedOver, Handover, Routed, RoutedCall};

/// How often a replica announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica not heard from for this long is no longer counted as a member.
pub const LEASE: Duration = Duration::from_secs(5);
/// Members remembered at most; heartbeats from further replicas are ignored (logged once).
pub const MAX_MEMBERS: usize = 1024;
/// Routed requests served at once on one replica; beyond it they wait for a slot.
pub const MAX_ROUTED_IN_FLIGHT: usize = 256;
/// Announcements (`done`, `attached`, `revoke`, heartbeats) on their way to NATS at once;
/// beyond it new ones are dropped and logged (the store stays the truth; a dropped `done`
/// leaves a waiter to its deadline).
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 4096;

/// Why the cluster link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS URL or options were refused.
    #[error("cluster.nats_url: {0}")]
    Connect(String),
}

/// One replica's link to the others.
pub struct Cluster {
    client: async_nats::Client,
    prefix: String,
    replica_id: String,
    timeout: Duration,
    registry: Arc<Registry>,
    commands: OnceLock<Weak<CommandService>>,
    /// Agents whose sessions this replica holds: their dispatch subscription task.
    held: Mutex<HashMap<String, presence::Held>>,
    /// Replica id → when its last heartbeat arrived.
    members: Mutex<HashMap<String, Instant>>,
    routed: Arc<tokio::sync::Semaphore>,
    publishes: Arc<tokio::sync::Semaphore>,
    shutdown: watch::Receiver<bool>,
    /// The shared store for `agent.<X>.identity` (set by `bind_identity`).
    identity: OnceLock<identity::IdentitySync>,
    /// Counts (re)connects of the NATS link: what the fleet learner and the identity
    /// reload wait on.
    link_ups: watch::Receiver<u64>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("replica_id", &self.replica_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts connecting (in the background: a replica starts, not ready, while NATS is
    /// down) and spawns the shared subscriptions and the heartbeat until `shutdown` flips.
    pub async fn start(
        config: &ClusterConfig,
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, ClusterError> {
        let replica = config.replica_id.clone();
        // Each (re)connect: learn what the other replicas hold (announcements sent while the
        // link was down were missed).
        let (link_up, link_ups) = watch::channel(0u64);
        let client = async_nats::ConnectOptions::new()
            .name(format!("agentmesh-backend {replica}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((100 * attempt as u64).min(2_000))
            })
            .event_callback(move |event| {
                let replica = replica.clone();
                if matches!(event, async_nats::Event::Connected) {
                    link_up.send_modify(|n| *n += 1);
                }
                async move { info!(replica = %replica, %event, "cluster link") }
            })
            .connect(config.nats_url.as_str())
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        let cluster = Arc::new(Cluster {
            client,
            prefix: format!("agentmesh.{}", config.name),
            replica_id: config.replica_id.clone(),
            timeout: config.request_timeout(),
            registry,
            commands: OnceLock::new(),
            held: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            routed: Arc::new(tokio::sync::Semaphore::new(MAX_ROUTED_IN_FLIGHT)),
            publishes: Arc::new(tokio::sync::Semaphore::new(MAX_PUBLISHES_IN_FLIGHT)),
            shutdown,
            identity: OnceLock::new(),
            link_ups,
        });
        cluster.clone().spawn_shared().await;
        cluster.spawn_learning();
        info!(replica = %cluster.replica_id, url = %config.nats_url, "cluster routing started");
        Ok(cluster)
    }

    /// Wires the command service in (the two refer to each other; this side is weak).
    pub fn bind(&self, commands: &Arc<CommandService>) {
        let _ = self.commands.set(Arc::downgrade(commands));
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Whether the NATS link is up right now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Replicas (other than this one) heard from within [`LEASE`], sorted.
    pub fn members(&self) -> Vec<String> {
        let mut members = crate::sync::lock(&self.members);
        members.retain(|_, seen| seen.elapsed() < LEASE);
        let mut ids: Vec<String> = members.keys().cloned().collect();
        ids.sort();
        ids
    }

    fn commands(&self) -> Option<Arc<CommandService>> {
        self.commands.get().and_then(Weak::upgrade)
    }

    fn subject(&self, tail: &str) -> String {
        format!("{}.{tail}", self.prefix)
    }

    /// The subject of agent `id`'s `kind` (`dispatch`, `attached`, `revoke`).
    fn agent_subject(&self, id: &str, kind: &str) -> String {
        self.subject(&format!("agent.{}.{kind}", agent_token(id)))
    }

    /// Tells every replica that command `command_id` is final in the shared store.
    pub fn publish_done(&self, command_id: &str) {
        if !ClusterConfig::valid_token(command_id) {
            return;
        }
        self.publish(
            self.subject(&format!("command.{command_id}.done")),
            Vec::new(),
        );
    }

    /// Fire-and-forget publish; while NATS is down it is dropped (the store stays the truth).
    fn publish(&self, subject: String, payload: Vec<u8>) {
        if !self.connected() {
            return;
        }
        let Ok(permit) = self.publishes.clone().try_acquire_owned() else {
            warn!(%subject, "too many cluster announcements in flight; dropped");
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.publish(subject, payload.into()).await {
                warn!(error = %e, "cluster publish failed");
            }
            drop(permit);
        });
    }

    /// Subscriptions every replica holds (done, attached, revoke, heartbeats, agent lists)
    /// and the heartbeat ticker; each ends on shutdown.
    async fn spawn_shared(self: Arc<Self>) {
        let subjects = [
            "command.*.done",
            "agent.*.attached",
            "agent.*.detached",
            "agent.*.revoke",
            "agent.*.identity",
            "replica.*.heartbeat",
            "agents.list",
        ];
        for tail in subjects {
            let sub = match self.client.subscribe(self.subject(tail)).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, subject = tail, "cluster subscribe failed");
                    continue;
                }
            };
            let me = Arc::downgrade(&self);
            let mut stop = self.shutdown.clone();
            tokio::spawn(async move {
                let mut sub = sub;
                loop {
                    let msg = tokio::select! {
                        _ = agentmesh_daemon::stopped(&mut stop) => break,
                        m = sub.next() => m,
                    };
                    let (Some(msg), Some(me)) = (msg, me.upgrade()) else {
                        break;
                    };
                    me.on_shared(tail, msg).await;
                }
            });
        }
        let me = Arc::downgrade(&self);
        let mut stop = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = agentmesh_daemon::stopped(&mut stop) => break,
                    _ = tick.tick() => {}
                }
                let Some(me) = me.upgrade() else { break };
                let subject = me.subject(&format!("replica.{}.heartbeat", me.replica_id));
                me.publish(subject, Vec::new());
            }
        });
    }

    /// After each (re)connect, once every live replica has had a heartbeat's time to be
    /// heard, gathers the fleet's agents ([`Cluster::learn_fleet`]). Ends on shutdown.
    fn spawn_learning(self: &Arc<Self>) {
        let mut link_up = self.link_ups.clone();
        let me = Arc::downgrade(self);
        let mut stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = agentmesh_daemon::stopped(&mut stop) => break,
                    changed = link_up.changed() => if changed.is_err() { break },
                }
                tokio::select! {
                    _ = agentmesh_daemon::stopped(&mut stop) => break,
                    _ = tokio::time::sleep(HEARTBEAT * 2) => {}
                }
                let Some(me) = me.upgrade() else { break };
                me.learn_fleet().await;
            }
        });
    }

    async fn on_shared(self: &Arc<Self>, kind: &str, msg: async_nats::Message) {
        let token = msg.subject.split('.').nth(3).unwrap_or_default().to_owned();
        match kind {
            "command.*.done" => {
                if let Some(commands) = self.commands() {
                    commands.wake_remote(&token).await;
                }
            }
            "agent.*.attached" => self.on_attached(&msg.payload),
            "agent.*.detached" => self.on_detached(&msg.payload),
            "agent.*.revoke" => self.on_revoke(&msg.payload),
            "agent.*.identity" => self.on_identity(&msg.payload).await,
            "replica.*.heartbeat" => self.on_heartbeat(token),
            _ => self.answer_list(msg).await,
        }
    }

    fn on_heartbeat(&self, replica: String) {
        if replica == self.replica_id {
            return;
        }
        let mut members = crate::sync::lock(&self.members);
        if members.len() >= MAX_MEMBERS && !members.contains_key(&replica) {
            members.retain(|_, seen| seen.elapsed() < LEASE);
            if members.len() >= MAX_MEMBERS {
                return;
            }
        }
        members.insert(replica, Instant::now());
    }
}

/// Agent ids made subject-safe: as they are when they are one token, else `x` + hex.
fn agent_token(id: &str) -> String {
    if ClusterConfig::valid_token(id) && !id.starts_with('x') {
        id.to_owned()
    } else {
        format!("x{}", crate::hex::encode(id.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_become_one_subject_token_without_collisions() {
        assert_eq!(agent_token("edge-01"), "edge-01");
        assert_eq!(
            agent_token("a.b"),
            format!("x{}", crate::hex::encode(b"a.b"))
        );
        // An id that looks like an encoded one is encoded too, so the two never meet.
        let encoded = agent_token("a.b");
        assert_ne!(agent_token(&encoded), encoded);
        for id in ["a b", "a*", "a>", "", "x"] {
            assert!(ClusterConfig::valid_token(&agent_token(id)), "{id:?}");
        }
    }

    #[test]
    fn routed_answers_round_trip() {
        let refused = route::Routed::Refused {
            code: "agent_revoked".into(),
            message: "no".into(),
        };
        let text = serde_json::to_string(&refused).unwrap_or_default();
        match serde_json::from_str::<route::Routed>(&text) {
            Ok(route::Routed::Refused { code, .. }) => assert_eq!(code, "agent_revoked"),
            other => panic!("{other:?}"),
        }
        let e = crate::commands::SubmitError::remote("rate_limited", "slow".into(), "a");
        assert_eq!(e.code(), "rate_limited");
        let e = crate::commands::SubmitError::remote("weird", "?".into(), "a");
        assert_eq!(e.code(), "cluster_unavailable");
    }
}
