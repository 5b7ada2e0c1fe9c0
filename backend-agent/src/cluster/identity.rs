//! Identities in step across replicas: `agent.<X>.identity`.
//!
//! A replica that changed agent X's pins or revocation in the shared store (join token
//! redeemed, admin enrolment, renewal, a renewal completed), or set X's authoritative labels,
//! publishes `agent.<X>.identity` `{agent_id, replica_id, labels?}`. The others reload X's
//! pins and revoked flag from the store and apply the labels carried (unless their own
//! `[[agents]] labels` name X). Announcements are best effort; two fallbacks cover lost ones:
//! the hub refreshes an agent from the store once before refusing its pin as not enrolled
//! ([`Cluster::refresh_identity`], at most [`MAX_IDENTITY_REFRESHES`] at once), and after the
//! NATS link comes back every pin, revocation and label is reloaded once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use agentmesh_protocol::close;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::Cluster;
use crate::registry::{IdentityNotifier, StoredIdentity};
use crate::store::{PinRecord, Store, StoreError};

/// Hub refreshes (an unknown pin looked up in the store) running at once on one replica;
/// above it the pin is refused as `pin_not_enrolled` without a lookup, as on a single node.
pub const MAX_IDENTITY_REFRESHES: usize = 16;
/// How often a failed reload is retried (a reconnect reloads at once).
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Body of `agent.<X>.identity`.
#[derive(Debug, Serialize, Deserialize)]
struct IdentityChanged {
    agent_id: String,
    replica_id: String,
    /// The authoritative labels just set, when the change was a label change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<String, String>>,
}

/// The cluster's side of identity sync: the shared store it reloads from.
pub(super) struct IdentitySync {
    store: Store,
    refreshes: Arc<Semaphore>,
    /// A reload failed (store down): the watcher reloads everything at its next tick.
    reload_pending: AtomicBool,
}

/// The registry's notifier: publishes through the cluster while it lives.
struct Notifier(Weak<Cluster>);

impl IdentityNotifier for Notifier {
    fn identity_changed(&self, agent_id: &str, labels: Option<&BTreeMap<String, String>>) {
        if let Some(cluster) = self.0.upgrade() {
            cluster.announce_identity(agent_id, labels);
        }
    }
}

impl Cluster {
    /// Gives the cluster the shared store, installs the registry's notifier and watches the
    /// link for reconnects (until shutdown). Call once enrolments and labels are loaded; a
    /// second call is ignored.
    pub fn bind_identity(self: &Arc<Self>, store: Store) {
        let sync = IdentitySync {
            store,
            refreshes: Arc::new(Semaphore::new(MAX_IDENTITY_REFRESHES)),
            reload_pending: AtomicBool::new(false),
        };
        if self.identity.set(sync).is_err() {
            return;
        }
        self.registry
            .set_identity_notifier(Arc::new(Notifier(Arc::downgrade(self))));
        let me = Arc::downgrade(self);
        let mut stop = self.shutdown.clone();
        let mut link_up = self.link_ups.clone();
        // The initial connect may not have happened yet: one that happens later also
        // reloads (announcements before it were never received).
        if self.connected() {
            link_up.borrow_and_update();
        }
        tokio::spawn(async move {
            let mut retry = tokio::time::interval(RETRY_EVERY);
            let mut reconnected = false;
            loop {
                tokio::select! {
                    _ = agentmesh_daemon::stopped(&mut stop) => break,
                    changed = link_up.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        reconnected = true;
                    }
                    _ = retry.tick() => {}
                }
                let Some(me) = me.upgrade() else { break };
                let Some(sync) = me.identity.get() else { break };
                if !reconnected && !sync.reload_pending.load(Ordering::Relaxed) {
                    continue;
                }
                match me.reload_identities(sync).await {
                    Ok(agents) => {
                        info!(agents, "identities reloaded from the store");
                        sync.reload_pending.store(false, Ordering::Relaxed);
                        reconnected = false;
                    }
                    Err(e) => {
                        debug!(error = %e, "identity reload failed; retrying");
                        sync.reload_pending.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    /// Publishes `agent.<X>.identity` (best effort).
    fn announce_identity(&self, agent_id: &str, labels: Option<&BTreeMap<String, String>>) {
        let body = IdentityChanged {
            agent_id: agent_id.to_owned(),
            replica_id: self.replica_id.clone(),
            labels: labels.cloned(),
        };
        if let Ok(payload) = serde_json::to_vec(&body) {
            self.publish(self.agent_subject(agent_id, "identity"), payload);
        }
    }

    /// Another replica changed an agent's identity: catch up from the store.
    pub(super) async fn on_identity(&self, payload: &[u8]) {
        let Ok(change) = serde_json::from_slice::<IdentityChanged>(payload) else {
            debug!("malformed identity announcement ignored");
            return;
        };
        if change.replica_id == self.replica_id {
            return;
        }
        let Some(sync) = self.identity.get() else {
            return;
        };
        if let Some(labels) = change.labels {
            if crate::labels::validate(&labels).is_ok() {
                self.registry.apply_stored_labels(&change.agent_id, labels);
            }
            return;
        }
        // Bounded: a hung store delays this subject's next announcement by at most this.
        let refresh = self.refresh_agent(sync, &change.agent_id);
        let failed = match tokio::time::timeout(self.timeout, refresh).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the store did not answer in time".to_owned(),
        };
        warn!(agent.id = %change.agent_id, error = %failed, "cannot reload an agent's identity; reloading all once the store answers");
        sync.reload_pending.store(true, Ordering::Relaxed);
    }

    /// The hub found `agent_id`'s pin not enrolled: reload the agent from the store once
    /// (an announcement may have been lost). `false` when nothing was reloaded: no store
    /// bound yet, [`MAX_IDENTITY_REFRESHES`] already running, or the store failed.
    pub async fn refresh_identity(&self, agent_id: &str) -> bool {
        let Some(sync) = self.identity.get() else {
            return false;
        };
        let Ok(_permit) = sync.refreshes.clone().try_acquire_owned() else {
            debug!(agent.id = %agent_id, "identity refreshes at their bound; not looked up");
            return false;
        };
        match tokio::time::timeout(self.timeout, self.refresh_agent(sync, agent_id)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                warn!(agent.id = %agent_id, error = %e, "cannot reload an agent's identity");
                false
            }
            Err(_) => false,
        }
    }

    /// Replaces one agent's pins and revoked flag with the store's; a session of it whose
    /// pin is now revoked is closed 4004.
    async fn refresh_agent(&self, sync: &IdentitySync, agent_id: &str) -> Result<(), StoreError> {
        let pins = sync.store.pins(agent_id).await?;
        let revoked = sync
            .store
            .revoked_agents()
            .await?
            .iter()
            .any(|id| id == agent_id);
        let stored = StoredIdentity::from_pins(&pins, revoked);
        self.apply(agent_id, stored);
        Ok(())
    }

    /// Reloads every agent's pins, revocation and stored labels; returns how many agents.
    async fn reload_identities(&self, sync: &IdentitySync) -> Result<usize, StoreError> {
        let mut pins: HashMap<String, Vec<PinRecord>> = HashMap::new();
        for p in sync.store.all_pins().await? {
            pins.entry(p.agent_id.clone()).or_default().push(p);
        }
        let revoked: HashSet<String> = sync.store.revoked_agents().await?.into_iter().collect();
        let labels = sync.store.agent_labels().await?;
        let ids: HashSet<&String> = pins.keys().chain(revoked.iter()).collect();
        for id in &ids {
            let records = pins.get(*id).map(Vec::as_slice).unwrap_or_default();
            self.apply(
                id,
                StoredIdentity::from_pins(records, revoked.contains(*id)),
            );
        }
        for (id, labels) in labels {
            self.registry.apply_stored_labels(&id, labels);
        }
        Ok(ids.len())
    }

    fn apply(&self, agent_id: &str, stored: StoredIdentity) {
        if let Some(session) = self.registry.replace_identity(agent_id, stored) {
            info!(agent.id = %agent_id, "revoked on another replica: closing");
            session.request_close(close::REVOKED, "revoked");
        }
    }
}
