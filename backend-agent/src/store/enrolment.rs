//! Enrolment persistence: the pins each agent may present, revoked agents and one-time join
//! tokens (issue 4, "Enrolment lifecycle"), so identities survive restarts.
//!
//! A pin moves `active` → `retired` (after a renewal) and either may become `revoked`; revoked
//! is final, so a stolen key cannot be brought back by a later upsert. Join tokens are stored
//! by the SHA-256 of the secret only, and redeeming one is a single atomic check-and-consume.
//! The rules live here as plain functions so both implementations apply exactly the same ones.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::{Store, StoreError};

mod renewal;
pub use renewal::{refusal as renewal_refusal, RenewalRecord, RenewalStart};

/// How long a used join token is kept (so a replay says "already used", not "unknown").
pub const USED_TOKEN_RETENTION: Duration = Duration::days(7);

/// Lifecycle state of a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinState {
    /// Accepted at the hub.
    Active,
    /// Replaced by a renewal; no longer accepted.
    Retired,
    /// Revoked by an admin; final.
    Revoked,
}

impl PinState {
    /// Every state.
    pub const ALL: [PinState; 3] = [PinState::Active, PinState::Retired, PinState::Revoked];

    /// The stored name (`"active"`, `"retired"`, `"revoked"`).
    pub fn as_str(self) -> &'static str {
        match self {
            PinState::Active => "active",
            PinState::Retired => "retired",
            PinState::Revoked => "revoked",
        }
    }
}

impl fmt::Display for PinState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a [`PinState`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pin state {0:?}")]
pub struct UnknownPinState(pub String);

impl FromStr for PinState {
    type Err = UnknownPinState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PinState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownPinState(s.to_owned()))
    }
}

/// One pin of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The agent.
    pub agent_id: String,
    /// The pin of the agent's certificate key.
    pub pin: String,
    /// Current state.
    pub state: PinState,
    /// How it was enrolled: one of the `SOURCE_*` constants.
    pub source: String,
    /// When it was first stored (RFC 3339).
    pub created_at: String,
    /// When its state last changed (RFC 3339).
    pub changed_at: String,
}

impl PinRecord {
    /// Merged in from a static `[[agents]]` entry at start.
    pub const SOURCE_CONFIG: &'static str = "config";
    /// Enrolled directly by an admin through the API.
    pub const SOURCE_API: &'static str = "api";
    /// Enrolled by redeeming a join token.
    pub const SOURCE_JOIN_TOKEN: &'static str = "join_token";
    /// Enrolled by a certificate renewal over an authenticated session.
    pub const SOURCE_RENEWAL: &'static str = "renewal";
}

/// A one-time join token; only the hash of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// SHA-256 of the token secret, lowercase hex.
    pub token_sha256: String,
    /// The only agent id the token may enrol.
    pub agent_id: String,
    /// Token name of the admin who issued it.
    pub created_by: String,
    /// When it was issued (RFC 3339).
    pub created_at: String,
    /// When it stops working (RFC 3339).
    pub expires_at: String,
    /// When it was redeemed (RFC 3339); a token is single-use.
    pub used_at: Option<String>,
}

/// Outcome of [`EnrolmentStore::redeem_join_token`]. Only `Ok` consumes the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeem {
    /// Consumed now; the token with its `used_at` set.
    Ok(JoinToken),
    /// No such token (never issued, or pruned).
    Unknown,
    /// Redeemed before.
    AlreadyUsed,
    /// Past its `expires_at`.
    Expired,
    /// Issued for another agent id.
    WrongAgent,
    /// The agent is revoked: only an admin's explicit enrolment lifts that, never a token.
    AgentRevoked,
}

/// Storage for enrolment state. Methods block; async code goes through [`Store`].
pub trait EnrolmentStore: Send + Sync + 'static {
    /// Stores `(agent_id, pin)` with `state`, or changes the state of an existing one (its
    /// `source` and `created_at` are kept; `changed_at` moves only when the state changes).
    /// A revoked pin stays revoked: making it anything else is [`StoreError::Conflict`].
    /// Agent-level revocation is not checked here; see [`EnrolmentStore::unrevoke_agent`].
    fn upsert_pin(
        &self,
        agent_id: &str,
        pin: &str,
        state: PinState,
        source: &str,
    ) -> Result<(), StoreError>;
    /// The pins of one agent, in enrolment order.
    fn pins(&self, agent_id: &str) -> Result<Vec<PinRecord>, StoreError>;
    /// Every pin, in enrolment order.
    fn all_pins(&self) -> Result<Vec<PinRecord>, StoreError>;
    /// Revokes every pin of the agent, marks the agent revoked (also an agent with no
    /// stored pins, e.g. one from static config) and deletes its unused join tokens, all at
    /// once. Returns how many pins changed state.
    fn revoke_agent(&self, agent_id: &str) -> Result<usize, StoreError>;
    /// Clears the agent-level revocation (an admin enrolling a fresh pin); revoked pins stay
    /// revoked. Not an error if the agent was not revoked.
    fn unrevoke_agent(&self, agent_id: &str) -> Result<(), StoreError>;
    /// Revoked agent ids, sorted.
    fn revoked_agents(&self) -> Result<Vec<String>, StoreError>;
    /// Stores a new join token; [`StoreError::Duplicate`] if the hash exists. Its times must be
    /// RFC 3339.
    fn insert_join_token(&self, t: &JoinToken) -> Result<(), StoreError>;
    /// Atomically checks and consumes a token for `agent_id` at `now_rfc3339`. Checks run in
    /// the order of [`Redeem`]'s variants; any refusal leaves the token untouched.
    fn redeem_join_token(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
    ) -> Result<Redeem, StoreError>;
    /// Like [`EnrolmentStore::redeem_join_token`], and in the same transaction refuses a
    /// revoked agent ([`Redeem::AgentRevoked`]) and enrols `pin` as active; a revoked `pin`
    /// is [`StoreError::Conflict`]. Any refusal or error leaves the token unspent, so call
    /// this only once the CSR passed every check (the certificate is signed).
    fn redeem_join_token_for_pin(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
        pin: &str,
    ) -> Result<Redeem, StoreError>;
    /// The latest renewal of `agent_id`, if any.
    fn renewal(&self, agent_id: &str) -> Result<Option<RenewalRecord>, StoreError>;
    /// Atomically applies [`renewal_refusal`] against the stored renewal; if allowed,
    /// retires an outstanding new pin, enrols `record.new_pin` as active (source renewal;
    /// a revoked pin is [`StoreError::Conflict`]) and stores `record` as the latest.
    fn start_renewal(
        &self,
        record: &RenewalRecord,
        min_interval_ms: i64,
    ) -> Result<RenewalStart, StoreError>;
    /// A session authenticated with `pin_in_use`: if that is the outstanding new pin of the
    /// agent's renewal, marks it completed and retires the old pin (unless revoked).
    /// Returns the retired pin.
    fn complete_renewal(
        &self,
        agent_id: &str,
        pin_in_use: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Deletes tokens that are expired at `now_rfc3339` or were used more than
    /// [`USED_TOKEN_RETENTION`] before it, keeping the table bounded. Returns how many.
    fn prune_join_tokens(&self, now_rfc3339: &str) -> Result<usize, StoreError>;
}

/// Parses an RFC 3339 time; `what` names it in the error.
pub(super) fn parse_time(what: &str, s: &str) -> Result<OffsetDateTime, StoreError> {
    crate::clock::parse_rfc3339(s)
        .map_err(|e| StoreError::Corrupt(format!("{what}: bad RFC 3339 time {s:?}: {e}")))
}

/// Whether a pin in state `from` may be set to `to`.
pub(super) fn check_transition(
    agent_id: &str,
    pin: &str,
    from: PinState,
    to: PinState,
) -> Result<(), StoreError> {
    if from == PinState::Revoked && to != PinState::Revoked {
        return Err(StoreError::Conflict(format!(
            "pin {pin:?} of agent {agent_id:?} is revoked and cannot become {to}"
        )));
    }
    Ok(())
}

/// Rejects a token whose times cannot be read back later.
pub(super) fn validate_token(t: &JoinToken) -> Result<(), StoreError> {
    let owner = "new join token";
    parse_time(owner, &t.created_at)?;
    parse_time(owner, &t.expires_at)?;
    if let Some(used) = &t.used_at {
        parse_time(owner, used)?;
    }
    Ok(())
}

/// Why `t` cannot be redeemed for `agent_id` at `now`, or `None` if it can.
pub(super) fn refusal(
    t: &JoinToken,
    agent_id: &str,
    now: OffsetDateTime,
) -> Result<Option<Redeem>, StoreError> {
    if t.used_at.is_some() {
        return Ok(Some(Redeem::AlreadyUsed));
    }
    if parse_time("join token expires_at", &t.expires_at)? <= now {
        return Ok(Some(Redeem::Expired));
    }
    if t.agent_id != agent_id {
        return Ok(Some(Redeem::WrongAgent));
    }
    Ok(None)
}

/// Whether a token with these times is due for pruning at `now`. A time that cannot be read
/// makes the token unusable anyway, so it is pruned too (with a warning).
pub(super) fn prunable(expires_at: &str, used_at: Option<&str>, now: OffsetDateTime) -> bool {
    let unreadable = |e: StoreError| {
        tracing::warn!(error = %e, "pruning a join token with an unreadable time");
        true
    };
    let expired =
        parse_time("join token expires_at", expires_at).map_or_else(unreadable, |t| t <= now);
    let used_long_ago = used_at.is_some_and(|used| {
        parse_time("join token used_at", used)
            .map_or_else(unreadable, |t| t + USED_TOKEN_RETENTION < now)
    });
    expired || used_long_ago
}

impl Store {
    /// See [`EnrolmentStore::upsert_pin`].
    pub async fn upsert_pin(
        &self,
        agent_id: &str,
        pin: &str,
        state: PinState,
        source: &str,
    ) -> Result<(), StoreError> {
        let (agent_id, pin, source) = (agent_id.to_owned(), pin.to_owned(), source.to_owned());
        self.run(move |s| s.upsert_pin(&agent_id, &pin, state, &source))
            .await
    }

    /// See [`EnrolmentStore::pins`].
    pub async fn pins(&self, agent_id: &str) -> Result<Vec<PinRecord>, StoreError> {
        let agent_id = agent_id.to_owned();
        self.run(move |s| s.pins(&agent_id)).await
    }

    /// See [`EnrolmentStore::all_pins`].
    pub async fn all_pins(&self) -> Result<Vec<PinRecord>, StoreError> {
        self.run(|s| s.all_pins()).await
    }

    /// See [`EnrolmentStore::revoke_agent`].
    pub async fn revoke_agent(&self, agent_id: &str) -> Result<usize, StoreError> {
        let agent_id = agent_id.to_owned();
        self.run(move |s| s.revoke_agent(&agent_id)).await
    }

    /// See [`EnrolmentStore::unrevoke_agent`].
    pub async fn unrevoke_agent(&self, agent_id: &str) -> Result<(), StoreError> {
        let agent_id = agent_id.to_owned();
        self.run(move |s| s.unrevoke_agent(&agent_id)).await
    }

    /// See [`EnrolmentStore::revoked_agents`].
    pub async fn revoked_agents(&self) -> Result<Vec<String>, StoreError> {
        self.run(|s| s.revoked_agents()).await
    }

    /// See [`EnrolmentStore::insert_join_token`].
    pub async fn insert_join_token(&self, t: &JoinToken) -> Result<(), StoreError> {
        let t = t.clone();
        self.run(move |s| s.insert_join_token(&t)).await
    }

    /// See [`EnrolmentStore::redeem_join_token`].
    pub async fn redeem_join_token(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
    ) -> Result<Redeem, StoreError> {
        let (hash, agent_id, now) = (
            token_sha256.to_owned(),
            agent_id.to_owned(),
            now_rfc3339.to_owned(),
        );
        self.run(move |s| s.redeem_join_token(&hash, &agent_id, &now))
            .await
    }

    /// See [`EnrolmentStore::prune_join_tokens`].
    pub async fn prune_join_tokens(&self, now_rfc3339: &str) -> Result<usize, StoreError> {
        let now = now_rfc3339.to_owned();
        self.run(move |s| s.prune_join_tokens(&now)).await
    }
}

#[cfg(any(test, feature = "conformance"))]
#[doc(hidden)]
pub mod tests;
