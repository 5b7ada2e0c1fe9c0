//! The [`EnrolmentStore`] implementation for [`PostgresStore`]. Every read-check-write runs
//! in one transaction holding the agent's advisory lock (and the token's row lock), so two
//! replicas cannot both redeem one token, nor enrol a pin past a concurrent revocation.

use postgres::{Row, Transaction};

use super::row::{self, duplicate_as};
use super::PostgresStore;
use crate::clock;
use crate::store::enrolment::{
    check_transition, parse_time, prunable, refusal, renewal_refusal, validate_token,
    RenewalRecord, RenewalStart,
};
use crate::store::{EnrolmentStore, JoinToken, PinRecord, PinState, Redeem, StoreError};

const PIN_COLUMNS: &str = "agent_id, pin, state, source, created_at, changed_at";

/// Advisory lock namespace (first key of the two-key form) of per-agent enrolment changes.
const AGENT_LOCK_SPACE: i32 = 0x616d_6e74;

/// Serialises enrolment changes of `agent_id` across connections and replicas until the
/// transaction ends.
fn lock_agent(tx: &mut Transaction<'_>, agent_id: &str) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&AGENT_LOCK_SPACE, &agent_id],
    )?;
    Ok(())
}

fn parse_pin_state(owner: &str, s: &str) -> Result<PinState, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("{owner}: {e}")))
}

fn read_pin(r: &Row) -> Result<PinRecord, StoreError> {
    let (agent_id, pin): (String, String) = (row::get(r, 0, "pin")?, row::get(r, 1, "pin")?);
    let owner = format!("pin {pin:?} of agent {agent_id:?}");
    Ok(PinRecord {
        state: parse_pin_state(&owner, &row::get::<String>(r, 2, &owner)?)?,
        source: row::get(r, 3, &owner)?,
        created_at: row::get(r, 4, &owner)?,
        changed_at: row::get(r, 5, &owner)?,
        agent_id,
        pin,
    })
}

/// The state of `(agent_id, pin)`, locking its row, inside a caller's transaction.
fn pin_state_tx(
    tx: &mut Transaction<'_>,
    agent_id: &str,
    pin: &str,
) -> Result<Option<PinState>, StoreError> {
    let found = tx.query_opt(
        "SELECT state FROM pins WHERE agent_id = $1 AND pin = $2 FOR UPDATE",
        &[&agent_id, &pin],
    )?;
    let owner = format!("pin {pin:?} of agent {agent_id:?}");
    found
        .map(|r| parse_pin_state(&owner, &row::get::<String>(&r, 0, &owner)?))
        .transpose()
}

/// `upsert_pin` inside a caller's transaction (which holds the agent's lock).
fn upsert_pin_tx(
    tx: &mut Transaction<'_>,
    agent_id: &str,
    pin: &str,
    state: PinState,
    source: &str,
) -> Result<(), StoreError> {
    let now = clock::now_rfc3339();
    match pin_state_tx(tx, agent_id, pin)? {
        Some(old) => {
            check_transition(agent_id, pin, old, state)?;
            if old != state {
                tx.execute(
                    "UPDATE pins SET state = $3, changed_at = $4 WHERE agent_id = $1 AND pin = $2",
                    &[&agent_id, &pin, &state.as_str(), &now],
                )?;
            }
        }
        None => {
            tx.execute(
                &format!("INSERT INTO pins ({PIN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $5)"),
                &[&agent_id, &pin, &state.as_str(), &source, &now],
            )?;
        }
    }
    Ok(())
}

/// The stored token, if any, locking its row, inside a caller's transaction.
fn read_token(
    tx: &mut Transaction<'_>,
    token_sha256: &str,
) -> Result<Option<JoinToken>, StoreError> {
    let found = tx.query_opt(
        "SELECT agent_id, created_by, created_at, expires_at, used_at \
         FROM join_tokens WHERE token_sha256 = $1 FOR UPDATE",
        &[&token_sha256],
    )?;
    let owner = "join token";
    found
        .map(|r| {
            Ok(JoinToken {
                token_sha256: token_sha256.to_owned(),
                agent_id: row::get(&r, 0, owner)?,
                created_by: row::get(&r, 1, owner)?,
                created_at: row::get(&r, 2, owner)?,
                expires_at: row::get(&r, 3, owner)?,
                used_at: row::get(&r, 4, owner)?,
            })
        })
        .transpose()
}

fn read_renewal(
    client: &mut impl postgres::GenericClient,
    agent_id: &str,
) -> Result<Option<RenewalRecord>, StoreError> {
    let found = client.query_opt(
        "SELECT old_pin, new_pin, requested_at_ms, completed FROM renewals WHERE agent_id = $1",
        &[&agent_id],
    )?;
    let owner = format!("renewal of agent {agent_id:?}");
    found
        .map(|r| {
            Ok(RenewalRecord {
                agent_id: agent_id.to_owned(),
                old_pin: row::get(&r, 0, &owner)?,
                new_pin: row::get(&r, 1, &owner)?,
                requested_at_ms: row::get(&r, 2, &owner)?,
                completed: row::get(&r, 3, &owner)?,
            })
        })
        .transpose()
}

/// Checks and consumes a token inside a caller's transaction; `pin`: also refuse a revoked
/// agent and enrol the pin. `(outcome, commit)`.
fn redeem_tx(
    tx: &mut Transaction<'_>,
    token_sha256: &str,
    agent_id: &str,
    now_rfc3339: &str,
    pin: Option<&str>,
) -> Result<(Redeem, bool), StoreError> {
    let now = parse_time("now", now_rfc3339)?;
    let Some(mut token) = read_token(tx, token_sha256)? else {
        return Ok((Redeem::Unknown, false));
    };
    if let Some(refused) = refusal(&token, agent_id, now)? {
        return Ok((refused, false));
    }
    if let Some(pin) = pin {
        let revoked = tx.query_opt(
            "SELECT 1 FROM revoked_agents WHERE agent_id = $1",
            &[&agent_id],
        )?;
        if revoked.is_some() {
            return Ok((Redeem::AgentRevoked, false));
        }
        // A revoked pin is a Conflict here, and the rollback leaves the token unspent.
        upsert_pin_tx(
            tx,
            agent_id,
            pin,
            PinState::Active,
            PinRecord::SOURCE_JOIN_TOKEN,
        )?;
    }
    tx.execute(
        "UPDATE join_tokens SET used_at = $2 WHERE token_sha256 = $1",
        &[&token_sha256, &now_rfc3339],
    )?;
    token.used_at = Some(now_rfc3339.to_owned());
    Ok((Redeem::Ok(token), true))
}

impl EnrolmentStore for PostgresStore {
    fn upsert_pin(
        &self,
        agent_id: &str,
        pin: &str,
        state: PinState,
        source: &str,
    ) -> Result<(), StoreError> {
        self.in_tx(|tx| {
            lock_agent(tx, agent_id)?;
            upsert_pin_tx(tx, agent_id, pin, state, source)?;
            Ok(((), true))
        })
    }

    fn pins(&self, agent_id: &str) -> Result<Vec<PinRecord>, StoreError> {
        let sql = format!("SELECT {PIN_COLUMNS} FROM pins WHERE agent_id = $1 ORDER BY seq");
        let rows = self.client()?.query(&sql, &[&agent_id])?;
        rows.iter().map(read_pin).collect()
    }

    fn all_pins(&self) -> Result<Vec<PinRecord>, StoreError> {
        let sql = format!("SELECT {PIN_COLUMNS} FROM pins ORDER BY seq");
        let rows = self.client()?.query(&sql, &[])?;
        rows.iter().map(read_pin).collect()
    }

    fn revoke_agent(&self, agent_id: &str) -> Result<usize, StoreError> {
        self.in_tx(|tx| {
            lock_agent(tx, agent_id)?;
            let now = clock::now_rfc3339();
            let revoked = PinState::Revoked.as_str();
            let changed = tx.execute(
                "UPDATE pins SET state = $2, changed_at = $3 WHERE agent_id = $1 AND state <> $2",
                &[&agent_id, &revoked, &now],
            )?;
            // The first revocation time is kept.
            tx.execute(
                "INSERT INTO revoked_agents (agent_id, at) VALUES ($1, $2) \
                 ON CONFLICT (agent_id) DO NOTHING",
                &[&agent_id, &now],
            )?;
            // A token issued before the revocation must not outlive it.
            tx.execute(
                "DELETE FROM join_tokens WHERE agent_id = $1 AND used_at IS NULL",
                &[&agent_id],
            )?;
            Ok((usize::try_from(changed).unwrap_or(usize::MAX), true))
        })
    }

    fn unrevoke_agent(&self, agent_id: &str) -> Result<(), StoreError> {
        self.in_tx(|tx| {
            lock_agent(tx, agent_id)?;
            tx.execute(
                "DELETE FROM revoked_agents WHERE agent_id = $1",
                &[&agent_id],
            )?;
            Ok(((), true))
        })
    }

    fn revoked_agents(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client()?
            .query("SELECT agent_id FROM revoked_agents ORDER BY agent_id", &[])?;
        rows.iter()
            .map(|r| row::get(r, 0, "revoked agent"))
            .collect()
    }

    fn insert_join_token(&self, t: &JoinToken) -> Result<(), StoreError> {
        validate_token(t)?;
        self.client()?
            .execute(
                "INSERT INTO join_tokens (token_sha256, agent_id, created_by, created_at, \
                 expires_at, used_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &t.token_sha256,
                    &t.agent_id,
                    &t.created_by,
                    &t.created_at,
                    &t.expires_at,
                    &t.used_at,
                ],
            )
            .map_err(duplicate_as(&t.token_sha256))?;
        Ok(())
    }

    fn redeem_join_token(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
    ) -> Result<Redeem, StoreError> {
        self.in_tx(|tx| redeem_tx(tx, token_sha256, agent_id, now_rfc3339, None))
    }

    fn redeem_join_token_for_pin(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
        pin: &str,
    ) -> Result<Redeem, StoreError> {
        self.in_tx(|tx| {
            lock_agent(tx, agent_id)?;
            redeem_tx(tx, token_sha256, agent_id, now_rfc3339, Some(pin))
        })
    }

    fn renewal(&self, agent_id: &str) -> Result<Option<RenewalRecord>, StoreError> {
        read_renewal(&mut *self.client()?, agent_id)
    }

    fn start_renewal(
        &self,
        record: &RenewalRecord,
        min_interval_ms: i64,
    ) -> Result<RenewalStart, StoreError> {
        let agent_id = record.agent_id.as_str();
        self.in_tx(|tx| {
            lock_agent(tx, agent_id)?;
            let last = read_renewal(tx, agent_id)?;
            if let Some(refused) =
                renewal_refusal(last.as_ref(), record.requested_at_ms, min_interval_ms)
            {
                return Ok((refused, false));
            }
            let superseded = last
                .filter(|l| !l.completed && l.new_pin != record.new_pin)
                .map(|l| l.new_pin);
            if let Some(unused) = &superseded {
                if pin_state_tx(tx, agent_id, unused)? == Some(PinState::Active) {
                    upsert_pin_tx(tx, agent_id, unused, PinState::Retired, "renewal")?;
                }
            }
            upsert_pin_tx(tx, agent_id, &record.new_pin, PinState::Active, "renewal")?;
            tx.execute(
                "INSERT INTO renewals (agent_id, old_pin, new_pin, requested_at_ms, completed) \
                 VALUES ($1, $2, $3, $4, FALSE) ON CONFLICT (agent_id) DO UPDATE SET \
                 old_pin = $2, new_pin = $3, requested_at_ms = $4, completed = FALSE",
                &[
                    &agent_id,
                    &record.old_pin,
                    &record.new_pin,
                    &record.requested_at_ms,
                ],
            )?;
            Ok((RenewalStart::Started { superseded }, true))
        })
    }

    fn complete_renewal(
        &self,
        agent_id: &str,
        pin_in_use: &str,
    ) -> Result<Option<String>, StoreError> {
        self.in_tx(|tx| {
            lock_agent(tx, agent_id)?;
            let Some(last) = read_renewal(tx, agent_id)? else {
                return Ok((None, false));
            };
            if last.completed || last.new_pin != pin_in_use {
                return Ok((None, false));
            }
            tx.execute(
                "UPDATE renewals SET completed = TRUE WHERE agent_id = $1",
                &[&agent_id],
            )?;
            let retired = match pin_state_tx(tx, agent_id, &last.old_pin)? {
                Some(PinState::Active) => {
                    upsert_pin_tx(tx, agent_id, &last.old_pin, PinState::Retired, "renewal")?;
                    Some(last.old_pin)
                }
                _ => None,
            };
            Ok((retired, true))
        })
    }

    fn prune_join_tokens(&self, now_rfc3339: &str) -> Result<usize, StoreError> {
        let now = parse_time("now", now_rfc3339)?;
        self.in_tx(|tx| {
            // Times are compared as instants, not strings, so this is decided here, not in SQL.
            let rows = tx.query(
                "SELECT token_sha256, expires_at, used_at FROM join_tokens FOR UPDATE",
                &[],
            )?;
            let mut doomed = Vec::new();
            for r in &rows {
                let expires_at: String = row::get(r, 1, "join token")?;
                let used_at: Option<String> = row::get(r, 2, "join token")?;
                if prunable(&expires_at, used_at.as_deref(), now) {
                    doomed.push(row::get::<String>(r, 0, "join token")?);
                }
            }
            tx.execute(
                "DELETE FROM join_tokens WHERE token_sha256 = ANY($1)",
                &[&doomed],
            )?;
            Ok((doomed.len(), true))
        })
    }
}
