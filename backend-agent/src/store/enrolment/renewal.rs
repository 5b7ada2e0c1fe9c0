//! Pending certificate renewals: at most one outstanding per agent, rate limited, persisted
//! so neither rule resets on a restart.
//!
//! One row per agent holds its latest renewal: the pin it renewed from, the pin it was
//! issued, when, and whether the new pin was seen in use. A new renewal is refused while the
//! last one is younger than the minimum interval; once allowed, an outstanding (never used)
//! new pin is retired, so a stolen key can hold at most one extra active pin.

use serde::{Deserialize, Serialize};

use super::super::{Store, StoreError};

/// The latest renewal of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRecord {
    /// The agent.
    pub agent_id: String,
    /// The pin of the session that asked for the renewal.
    pub old_pin: String,
    /// The pin of the certificate issued.
    pub new_pin: String,
    /// When it was issued (Unix ms).
    pub requested_at_ms: i64,
    /// Whether a session authenticated with `new_pin` since (then `old_pin` is retired).
    pub completed: bool,
}

/// Outcome of [`super::EnrolmentStore::start_renewal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewalStart {
    /// Recorded; the new pin is active. `superseded`: an outstanding new pin now retired.
    Started {
        /// The never-used pin of the previous renewal, now retired.
        superseded: Option<String>,
    },
    /// The previous renewal is still outstanding and younger than the interval.
    Outstanding {
        /// Milliseconds until another renewal is allowed.
        wait_ms: i64,
    },
    /// The previous renewal completed less than the interval ago.
    TooSoon {
        /// Milliseconds until another renewal is allowed.
        wait_ms: i64,
    },
}

/// Whether a renewal may start at `now_ms` after `last`, `min_interval_ms` apart. `None`:
/// allowed; otherwise the refusal.
pub fn refusal(
    last: Option<&RenewalRecord>,
    now_ms: i64,
    min_interval_ms: i64,
) -> Option<RenewalStart> {
    let last = last?;
    let wait_ms = last.requested_at_ms.saturating_add(min_interval_ms) - now_ms;
    if wait_ms <= 0 {
        return None;
    }
    Some(if last.completed {
        RenewalStart::TooSoon { wait_ms }
    } else {
        RenewalStart::Outstanding { wait_ms }
    })
}

impl Store {
    /// See [`super::EnrolmentStore::renewal`].
    pub async fn renewal(&self, agent_id: &str) -> Result<Option<RenewalRecord>, StoreError> {
        let agent_id = agent_id.to_owned();
        self.run(move |s| s.renewal(&agent_id)).await
    }

    /// See [`super::EnrolmentStore::start_renewal`].
    pub async fn start_renewal(
        &self,
        record: RenewalRecord,
        min_interval_ms: i64,
    ) -> Result<RenewalStart, StoreError> {
        self.run(move |s| s.start_renewal(&record, min_interval_ms))
            .await
    }

    /// See [`super::EnrolmentStore::complete_renewal`].
    pub async fn complete_renewal(
        &self,
        agent_id: &str,
        pin_in_use: &str,
    ) -> Result<Option<String>, StoreError> {
        let (agent_id, pin) = (agent_id.to_owned(), pin_in_use.to_owned());
        self.run(move |s| s.complete_renewal(&agent_id, &pin)).await
    }

    /// See [`super::EnrolmentStore::redeem_join_token_for_pin`].
    pub async fn redeem_join_token_for_pin(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
        pin: &str,
    ) -> Result<super::Redeem, StoreError> {
        let (hash, agent_id, now, pin) = (
            token_sha256.to_owned(),
            agent_id.to_owned(),
            now_rfc3339.to_owned(),
            pin.to_owned(),
        );
        self.run(move |s| s.redeem_join_token_for_pin(&hash, &agent_id, &now, &pin))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: i64, completed: bool) -> RenewalRecord {
        RenewalRecord {
            agent_id: "a".into(),
            old_pin: "p1".into(),
            new_pin: "p2".into(),
            requested_at_ms: at,
            completed,
        }
    }

    #[test]
    fn one_outstanding_and_one_per_interval() {
        assert_eq!(refusal(None, 0, 600_000), None);
        assert_eq!(
            refusal(Some(&rec(1_000, false)), 2_000, 600_000),
            Some(RenewalStart::Outstanding { wait_ms: 599_000 })
        );
        assert_eq!(
            refusal(Some(&rec(1_000, true)), 2_000, 600_000),
            Some(RenewalStart::TooSoon { wait_ms: 599_000 })
        );
        assert_eq!(refusal(Some(&rec(1_000, false)), 601_000, 600_000), None);
        assert_eq!(refusal(Some(&rec(1_000, false)), 1_000, 0), None);
    }
}
