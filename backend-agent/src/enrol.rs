//! Identity lifecycle: enrolment (direct pin or one-time join token + CSR), renewal over the
//! authenticated session, revocation. Everything is written to the store first, then applied
//! to the live registry, so it survives restarts; static `[[agents]]` are merged in at start.
//!
//! Revocation is final for everything but an admin: it voids the agent's unused join tokens,
//! a join token never lifts it, and only `POST /api/v1/enrollments {agent_id, pin}` does
//! (audited). A join token is spent only once its CSR is signed, in the same transaction
//! that enrols the pin. Renewal rules live in `enrol/renewal.rs`.
//!
//! In a cluster every change here is announced (`Registry::announce_identity`) once the
//! store holds it, and the other replicas reload that agent from the store.

mod renewal;

use std::sync::Arc;

use mesh_certs::{Ca, Validity};
use tracing::{info, warn};

use crate::audit::events;
use crate::auth::{new_token, token_sha256_hex};
use crate::clock;
use crate::config::{AgentEnrolment, CaConfig};
use crate::registry::Registry;
use crate::store::{JoinToken, PinState, Redeem, Store, StoreError};

/// Why an enrolment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// Bad agent id, pin, CSR or TTL.
    #[error("{0}")]
    Invalid(String),
    /// The join token is unknown, used, expired or for another agent (kept vague on purpose).
    #[error("invalid, used or expired join token")]
    BadToken(&'static str),
    /// No `[ca]` configured: the backend cannot sign certificates.
    #[error("this backend has no [ca] configured, so it cannot sign certificates")]
    NoCa,
    /// Unknown agent.
    #[error("unknown agent {0:?}")]
    UnknownAgent(String),
    /// The pin was revoked and cannot be enrolled again.
    #[error("{0}")]
    Conflict(String),
    /// A renewal was refused (one outstanding, rate limit); `code` is stable.
    #[error("{message}")]
    RenewalRefused {
        /// Stable code for the `error` frame and the audit record.
        code: &'static str,
        /// What the agent should know.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EnrolError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => EnrolError::Conflict(m),
            other => EnrolError::Store(other),
        }
    }
}

/// A signed certificate handed to an agent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignedIdentity {
    /// Agent id (the certificate's CN).
    pub agent_id: String,
    /// PEM certificate.
    pub certificate: String,
    /// PEM of the mesh CA.
    pub ca: String,
    /// Pin of the new certificate.
    pub pin: String,
    /// Pins of the hub, for the agent's `server_pins`.
    pub hub_pins: Vec<String>,
}

/// A fresh join token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedJoinToken {
    /// Agent id it is for.
    pub agent_id: String,
    /// The token (shown once; only its hash is stored).
    pub token: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
}

/// The enrolment service.
pub struct Enrolment {
    registry: Arc<Registry>,
    store: Store,
    ca: Option<Ca>,
    cert_days: i64,
    max_token_secs: u64,
    /// The hub certificate's pins; a reload that swaps the certificate replaces them.
    hub_pins: crate::reload::Swap<Vec<String>>,
    /// Least time between two renewals of one agent (0 = no limit), from
    /// `[limits] renewals_per_agent_per_hour`.
    min_renewal_interval_ms: i64,
    audit: Arc<crate::audit::Audit>,
}

impl Enrolment {
    /// Loads enrolments from the store, merges the static ones, and fills the registry.
    pub async fn start(
        registry: Arc<Registry>,
        store: Store,
        ca_config: &CaConfig,
        static_agents: &[AgentEnrolment],
        hub_pins: Vec<String>,
        renewals_per_agent_per_hour: u32,
        audit: Arc<crate::audit::Audit>,
    ) -> Result<Self, EnrolError> {
        let ca = match (&ca_config.cert, &ca_config.key) {
            (Some(cert), Some(key)) => Some(load_ca(cert, key)?),
            _ => None,
        };
        upsert_static(&store, static_agents).await?;
        for rec in store.all_pins().await? {
            match rec.state {
                PinState::Active => registry.enrol(&rec.agent_id, &rec.pin),
                PinState::Retired => registry.retire_pin(&rec.agent_id, &rec.pin),
                PinState::Revoked => registry.revoke_pin(&rec.agent_id, &rec.pin),
            }
        }
        for id in store.revoked_agents().await? {
            registry.mark_revoked(&id);
        }
        Ok(Enrolment {
            registry,
            store,
            ca,
            cert_days: ca_config.agent_cert_days,
            max_token_secs: ca_config.max_join_token_secs,
            hub_pins: crate::reload::Swap::new(hub_pins),
            min_renewal_interval_ms: match renewals_per_agent_per_hour {
                0 => 0,
                n => 3_600_000 / i64::from(n),
            },
            audit,
        })
    }

    /// Applies `[[agents]]` from a reloaded config: pins new to the file are enrolled (a
    /// revoked pin stays revoked). Pins that left the file stay enrolled, as after a restart
    /// (the store holds them): retire or revoke them through the API. Returns the pins
    /// enrolled now.
    pub async fn reload_static(&self, agents: &[AgentEnrolment]) -> Result<usize, EnrolError> {
        let mut added = 0;
        for (id, pin) in upsert_static(&self.store, agents).await? {
            if !self.registry.active_pins(&id).contains(&pin) {
                self.registry.enrol(&id, &pin);
                added += 1;
            }
        }
        Ok(added)
    }

    /// The hub's pins handed to enrolling agents, after a certificate swap.
    pub fn set_hub_pins(&self, pins: Vec<String>) {
        self.hub_pins.store(pins);
    }

    /// Admin: enrols `pin` for `agent_id` directly. This — and nothing else — clears an
    /// agent-level revocation; the record says so (`lifted_revocation`).
    pub async fn enrol_pin(
        &self,
        agent_id: &str,
        pin: &str,
        actor: &str,
    ) -> Result<(), EnrolError> {
        mesh_certs::validate_agent_id(agent_id).map_err(|e| EnrolError::Invalid(e.to_string()))?;
        crate::config::check_pin(pin).map_err(EnrolError::Invalid)?;
        let was_revoked = self.is_revoked(agent_id);
        self.store
            .upsert_pin(agent_id, pin, PinState::Active, "api")
            .await?;
        self.store.unrevoke_agent(agent_id).await?;
        self.registry.enrol(agent_id, pin);
        self.registry.unrevoke(agent_id);
        self.registry.announce_identity(agent_id);
        info!(agent.id = %agent_id, pin = %pin, lifted_revocation = was_revoked, "agent enrolled");
        self.audit
            .record(events::pin_enrolled(actor, agent_id, pin, was_revoked));
        Ok(())
    }

    fn is_revoked(&self, agent_id: &str) -> bool {
        self.registry.get(agent_id).is_some_and(|a| a.revoked)
    }

    /// Admin: creates a one-time join token for `agent_id`.
    pub async fn create_join_token(
        &self,
        agent_id: &str,
        ttl_secs: u64,
        created_by: &str,
    ) -> Result<IssuedJoinToken, EnrolError> {
        mesh_certs::validate_agent_id(agent_id).map_err(|e| EnrolError::Invalid(e.to_string()))?;
        if self.ca.is_none() {
            return Err(EnrolError::NoCa);
        }
        if ttl_secs == 0 || ttl_secs > self.max_token_secs {
            return Err(EnrolError::Invalid(format!(
                "ttl_secs must be 1..={}",
                self.max_token_secs
            )));
        }
        // A token could never be used: redeeming one does not lift a revocation.
        if self.is_revoked(agent_id) {
            return Err(EnrolError::Conflict(format!(
                "agent {agent_id:?} is revoked; a join token cannot lift that. Enrol a fresh \
                 pin with POST /api/v1/enrollments {{agent_id, pin}} instead"
            )));
        }
        let token = new_token().replacen("amt_", "amj_", 1);
        let token_sha256 = token_sha256_hex(&token);
        let now = clock::unix_ms();
        let expires_at = clock::rfc3339_from_unix_ms(now + (ttl_secs as i64) * 1000);
        self.store
            .insert_join_token(&JoinToken {
                token_sha256: token_sha256.clone(),
                agent_id: agent_id.to_owned(),
                created_by: created_by.to_owned(),
                created_at: clock::rfc3339_from_unix_ms(now),
                expires_at: expires_at.clone(),
                used_at: None,
            })
            .await?;
        let _ = self.store.prune_join_tokens(&clock::now_rfc3339()).await;
        info!(agent.id = %agent_id, %expires_at, "join token created");
        self.audit.record(events::join_token_created(
            created_by,
            agent_id,
            &token_sha256,
            &expires_at,
            ttl_secs,
        ));
        Ok(IssuedJoinToken {
            agent_id: agent_id.to_owned(),
            token,
            expires_at,
        })
    }

    /// An agent redeems a join token with a CSR (no bearer token: the join token is the
    /// credential). Single use, expiring, bound to the agent id.
    pub async fn redeem(
        &self,
        token: &str,
        agent_id: &str,
        csr: &str,
    ) -> Result<SignedIdentity, EnrolError> {
        let ca = self.ca.as_ref().ok_or(EnrolError::NoCa)?;
        mesh_certs::validate_agent_id(agent_id).map_err(|e| EnrolError::Invalid(e.to_string()))?;
        // Sign first: signing is the CSR's full check (signature, key type, CN), and the
        // token is spent only after it passed, so a bad CSR never burns a token. The
        // certificate of a refused redemption is dropped unused.
        let issued = ca
            .sign_agent_csr(csr, agent_id, Validity::days(self.cert_days))
            .map_err(|e| EnrolError::Invalid(format!("csr: {e}")))?;
        let outcome = self
            .store
            .redeem_join_token_for_pin(
                &token_sha256_hex(token),
                agent_id,
                &clock::now_rfc3339(),
                &issued.pin,
            )
            .await?;
        match outcome {
            Redeem::Ok(_) => {}
            Redeem::Unknown => return Err(EnrolError::BadToken("unknown")),
            Redeem::AlreadyUsed => return Err(EnrolError::BadToken("already used")),
            Redeem::Expired => return Err(EnrolError::BadToken("expired")),
            Redeem::WrongAgent => return Err(EnrolError::BadToken("issued for another agent")),
            Redeem::AgentRevoked => return Err(EnrolError::BadToken("agent revoked")),
        }
        // Never unrevokes. A revocation that raced this redemption has already revoked the
        // new pin in the store; keep it out of the registry too.
        if self.is_revoked(agent_id) {
            return Err(EnrolError::BadToken("agent revoked"));
        }
        self.registry.enrol(agent_id, &issued.pin);
        self.registry.announce_identity(agent_id);
        info!(agent.id = %agent_id, pin = %issued.pin, "agent enrolled with a join token");
        self.audit
            .record(events::enrolled_with_join_token(agent_id, &issued.pin));
        Ok(SignedIdentity {
            agent_id: agent_id.to_owned(),
            certificate: issued.cert_pem,
            ca: issued.ca_pem,
            pin: issued.pin,
            hub_pins: self.hub_pins.load().to_vec(),
        })
    }

    /// Admin: revokes every pin of the agent and disconnects it at once (4004).
    pub async fn revoke(&self, agent_id: &str, actor: &str) -> Result<(usize, bool), EnrolError> {
        if !self.registry.contains(agent_id) {
            return Err(EnrolError::UnknownAgent(agent_id.to_owned()));
        }
        let n = self.store.revoke_agent(agent_id).await?;
        let session = self.registry.revoke_agent(agent_id).flatten();
        let connected = session.is_some();
        if let Some(s) = session {
            s.request_close(agentmesh_protocol::close::REVOKED, "revoked");
        }
        info!(agent.id = %agent_id, pins = n, disconnected = connected, "agent revoked");
        self.audit
            .record(events::agent_revoked(actor, agent_id, n, connected));
        Ok((n, connected))
    }
}

fn load_ca(cert: &std::path::Path, key: &std::path::Path) -> Result<Ca, EnrolError> {
    Ca::load_files(cert, key).map_err(|e| EnrolError::Invalid(format!("[ca]: {e:#}")))
}

/// Writes the static `[[agents]]` pins to the store (a revoked one stays revoked) and returns
/// those that are active.
async fn upsert_static(
    store: &Store,
    agents: &[AgentEnrolment],
) -> Result<Vec<(String, String)>, EnrolError> {
    let mut active = Vec::new();
    for agent in agents {
        for pin in &agent.pins {
            match store
                .upsert_pin(&agent.id, pin, PinState::Active, "config")
                .await
            {
                Ok(()) => active.push((agent.id.clone(), pin.clone())),
                Err(StoreError::Conflict(_)) => {
                    warn!(agent.id = %agent.id, pin = %pin, "static [[agents]] pin was revoked; it stays revoked")
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(active)
}

/// Offline revocation (`backend-agent revoke --id`): marks every pin revoked in the store.
pub async fn revoke_offline(store: &Store, agent_id: &str) -> Result<usize, StoreError> {
    store.revoke_agent(agent_id).await
}
