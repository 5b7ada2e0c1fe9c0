//! The [`EnrolmentStore`] implementation for [`SqliteStore`]. Every read-check-write runs in
//! one IMMEDIATE transaction, so two hubs (or two requests) cannot both redeem one token.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::row::{decode_err, is_duplicate};
use super::SqliteStore;
use crate::clock;
use crate::store::enrolment::{
    check_transition, parse_time, prunable, refusal, renewal_refusal, validate_token,
    RenewalRecord, RenewalStart,
};
use crate::store::{EnrolmentStore, JoinToken, PinRecord, PinState, Redeem, StoreError};

const PIN_COLUMNS: &str = "agent_id, pin, state, source, created_at, changed_at";

fn parse_pin_state(owner: &str, s: &str) -> Result<PinState, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("{owner}: {e}")))
}

fn read_pin(row: &rusqlite::Row<'_>) -> Result<PinRecord, StoreError> {
    let text = |i| row.get::<_, String>(i).map_err(decode_err);
    let (agent_id, pin) = (text(0)?, text(1)?);
    let owner = format!("pin {pin:?} of agent {agent_id:?}");
    Ok(PinRecord {
        state: parse_pin_state(&owner, &text(2)?)?,
        source: text(3)?,
        created_at: text(4)?,
        changed_at: text(5)?,
        agent_id,
        pin,
    })
}

fn query_pins(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<PinRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read_pin(row)?);
    }
    Ok(out)
}

/// `upsert_pin` inside a caller's transaction.
fn upsert_pin_tx(
    tx: &rusqlite::Transaction<'_>,
    agent_id: &str,
    pin: &str,
    state: PinState,
    source: &str,
) -> Result<(), StoreError> {
    {
        let old: Option<String> = tx
            .prepare_cached("SELECT state FROM pins WHERE agent_id = ?1 AND pin = ?2")?
            .query_row([agent_id, pin], |row| row.get(0))
            .optional()
            .map_err(decode_err)?;
        let now = clock::now_rfc3339();
        match old {
            Some(old) => {
                let old = parse_pin_state(&format!("pin {pin:?} of agent {agent_id:?}"), &old)?;
                check_transition(agent_id, pin, old, state)?;
                if old != state {
                    tx.prepare_cached(
                        "UPDATE pins SET state = ?3, changed_at = ?4 \
                         WHERE agent_id = ?1 AND pin = ?2",
                    )?
                    .execute(params![agent_id, pin, state.as_str(), now])?;
                }
            }
            None => {
                tx.prepare_cached(&format!(
                    "INSERT INTO pins ({PIN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?5)"
                ))?
                .execute(params![agent_id, pin, state.as_str(), source, now])?;
            }
        }
        Ok(())
    }
}

/// The stored token, if any, inside a caller's transaction.
fn read_token(
    tx: &rusqlite::Transaction<'_>,
    token_sha256: &str,
) -> Result<Option<JoinToken>, StoreError> {
    tx.prepare_cached(
        "SELECT agent_id, created_by, created_at, expires_at, used_at \
         FROM join_tokens WHERE token_sha256 = ?1",
    )?
    .query_row([token_sha256], |row| {
        Ok(JoinToken {
            token_sha256: token_sha256.to_owned(),
            agent_id: row.get(0)?,
            created_by: row.get(1)?,
            created_at: row.get(2)?,
            expires_at: row.get(3)?,
            used_at: row.get(4)?,
        })
    })
    .optional()
    .map_err(decode_err)
}

fn read_renewal(
    tx: &rusqlite::Connection,
    agent_id: &str,
) -> Result<Option<RenewalRecord>, StoreError> {
    tx.prepare_cached(
        "SELECT old_pin, new_pin, requested_at_ms, completed FROM renewals WHERE agent_id = ?1",
    )?
    .query_row([agent_id], |row| {
        Ok(RenewalRecord {
            agent_id: agent_id.to_owned(),
            old_pin: row.get(0)?,
            new_pin: row.get(1)?,
            requested_at_ms: row.get(2)?,
            completed: row.get::<_, i64>(3)? != 0,
        })
    })
    .optional()
    .map_err(decode_err)
}

fn pin_state_tx(
    tx: &rusqlite::Transaction<'_>,
    agent_id: &str,
    pin: &str,
) -> Result<Option<PinState>, StoreError> {
    let state: Option<String> = tx
        .prepare_cached("SELECT state FROM pins WHERE agent_id = ?1 AND pin = ?2")?
        .query_row([agent_id, pin], |row| row.get(0))
        .optional()
        .map_err(decode_err)?;
    state
        .map(|s| parse_pin_state(&format!("pin {pin:?} of agent {agent_id:?}"), &s))
        .transpose()
}

impl EnrolmentStore for SqliteStore {
    fn upsert_pin(
        &self,
        agent_id: &str,
        pin: &str,
        state: PinState,
        source: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        upsert_pin_tx(&tx, agent_id, pin, state, source)?;
        tx.commit()?;
        Ok(())
    }

    fn pins(&self, agent_id: &str) -> Result<Vec<PinRecord>, StoreError> {
        let sql = format!("SELECT {PIN_COLUMNS} FROM pins WHERE agent_id = ?1 ORDER BY rowid");
        query_pins(&self.conn(), &sql, [agent_id])
    }

    fn all_pins(&self) -> Result<Vec<PinRecord>, StoreError> {
        let sql = format!("SELECT {PIN_COLUMNS} FROM pins ORDER BY rowid");
        query_pins(&self.conn(), &sql, [])
    }

    fn revoke_agent(&self, agent_id: &str) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = clock::now_rfc3339();
        let changed = tx
            .prepare_cached(
                "UPDATE pins SET state = ?2, changed_at = ?3 \
                 WHERE agent_id = ?1 AND state != ?2",
            )?
            .execute(params![agent_id, PinState::Revoked.as_str(), now])?;
        // The first revocation time is kept.
        tx.prepare_cached(
            "INSERT INTO revoked_agents (agent_id, at) VALUES (?1, ?2) \
             ON CONFLICT (agent_id) DO NOTHING",
        )?
        .execute([agent_id, &now])?;
        // A token issued before the revocation must not outlive it.
        tx.prepare_cached("DELETE FROM join_tokens WHERE agent_id = ?1 AND used_at IS NULL")?
            .execute([agent_id])?;
        tx.commit()?;
        Ok(changed)
    }

    fn unrevoke_agent(&self, agent_id: &str) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached("DELETE FROM revoked_agents WHERE agent_id = ?1")?
            .execute([agent_id])?;
        Ok(())
    }

    fn revoked_agents(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT agent_id FROM revoked_agents ORDER BY agent_id")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        rows.collect::<Result<_, _>>().map_err(decode_err)
    }

    fn insert_join_token(&self, t: &JoinToken) -> Result<(), StoreError> {
        validate_token(t)?;
        self.conn()
            .prepare_cached(
                "INSERT INTO join_tokens (token_sha256, agent_id, created_by, created_at, \
                 expires_at, used_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                t.token_sha256,
                t.agent_id,
                t.created_by,
                t.created_at,
                t.expires_at,
                t.used_at,
            ])
            .map_err(|e| match e {
                e if is_duplicate(&e) => StoreError::Duplicate(t.token_sha256.clone()),
                e => StoreError::Sqlite(e),
            })?;
        Ok(())
    }

    fn redeem_join_token(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
    ) -> Result<Redeem, StoreError> {
        let now = parse_time("now", now_rfc3339)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(mut token) = read_token(&tx, token_sha256)? else {
            return Ok(Redeem::Unknown);
        };
        if let Some(refused) = refusal(&token, agent_id, now)? {
            return Ok(refused);
        }
        tx.prepare_cached("UPDATE join_tokens SET used_at = ?2 WHERE token_sha256 = ?1")?
            .execute([token_sha256, now_rfc3339])?;
        tx.commit()?;
        token.used_at = Some(now_rfc3339.to_owned());
        Ok(Redeem::Ok(token))
    }

    fn redeem_join_token_for_pin(
        &self,
        token_sha256: &str,
        agent_id: &str,
        now_rfc3339: &str,
        pin: &str,
    ) -> Result<Redeem, StoreError> {
        let now = parse_time("now", now_rfc3339)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(mut token) = read_token(&tx, token_sha256)? else {
            return Ok(Redeem::Unknown);
        };
        if let Some(refused) = refusal(&token, agent_id, now)? {
            return Ok(refused);
        }
        let revoked: Option<String> = tx
            .prepare_cached("SELECT at FROM revoked_agents WHERE agent_id = ?1")?
            .query_row([agent_id], |row| row.get(0))
            .optional()
            .map_err(decode_err)?;
        if revoked.is_some() {
            return Ok(Redeem::AgentRevoked);
        }
        // A revoked pin is a Conflict here, and the rollback leaves the token unspent.
        upsert_pin_tx(&tx, agent_id, pin, PinState::Active, "join_token")?;
        tx.prepare_cached("UPDATE join_tokens SET used_at = ?2 WHERE token_sha256 = ?1")?
            .execute([token_sha256, now_rfc3339])?;
        tx.commit()?;
        token.used_at = Some(now_rfc3339.to_owned());
        Ok(Redeem::Ok(token))
    }

    fn renewal(&self, agent_id: &str) -> Result<Option<RenewalRecord>, StoreError> {
        read_renewal(&self.conn(), agent_id)
    }

    fn start_renewal(
        &self,
        record: &RenewalRecord,
        min_interval_ms: i64,
    ) -> Result<RenewalStart, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let agent_id = record.agent_id.as_str();
        let last = read_renewal(&tx, agent_id)?;
        if let Some(refused) =
            renewal_refusal(last.as_ref(), record.requested_at_ms, min_interval_ms)
        {
            return Ok(refused);
        }
        let superseded = last
            .filter(|l| !l.completed && l.new_pin != record.new_pin)
            .map(|l| l.new_pin);
        if let Some(unused) = &superseded {
            if pin_state_tx(&tx, agent_id, unused)? == Some(PinState::Active) {
                upsert_pin_tx(&tx, agent_id, unused, PinState::Retired, "renewal")?;
            }
        }
        upsert_pin_tx(&tx, agent_id, &record.new_pin, PinState::Active, "renewal")?;
        tx.prepare_cached(
            "INSERT INTO renewals (agent_id, old_pin, new_pin, requested_at_ms, completed) \
             VALUES (?1, ?2, ?3, ?4, 0) ON CONFLICT (agent_id) DO UPDATE SET \
             old_pin = ?2, new_pin = ?3, requested_at_ms = ?4, completed = 0",
        )?
        .execute(params![
            agent_id,
            record.old_pin,
            record.new_pin,
            record.requested_at_ms
        ])?;
        tx.commit()?;
        Ok(RenewalStart::Started { superseded })
    }

    fn complete_renewal(
        &self,
        agent_id: &str,
        pin_in_use: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(last) = read_renewal(&tx, agent_id)? else {
            return Ok(None);
        };
        if last.completed || last.new_pin != pin_in_use {
            return Ok(None);
        }
        tx.prepare_cached("UPDATE renewals SET completed = 1 WHERE agent_id = ?1")?
            .execute([agent_id])?;
        let retired = match pin_state_tx(&tx, agent_id, &last.old_pin)? {
            Some(PinState::Active) => {
                upsert_pin_tx(&tx, agent_id, &last.old_pin, PinState::Retired, "renewal")?;
                Some(last.old_pin)
            }
            _ => None,
        };
        tx.commit()?;
        Ok(retired)
    }

    fn prune_join_tokens(&self, now_rfc3339: &str) -> Result<usize, StoreError> {
        let now = parse_time("now", now_rfc3339)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Times are compared as instants, not strings, so this is decided here, not in SQL.
        let doomed: Vec<String> = {
            let mut stmt =
                tx.prepare_cached("SELECT token_sha256, expires_at, used_at FROM join_tokens")?;
            let mut rows = stmt.query([])?;
            let mut doomed = Vec::new();
            while let Some(row) = rows.next()? {
                // A value of the wrong type reads as unparsable: such a token is pruned.
                let expires_at: String = row.get(1).unwrap_or_default();
                let used_at: Option<String> = row.get(2).unwrap_or_else(|_| Some(String::new()));
                if prunable(&expires_at, used_at.as_deref(), now) {
                    doomed.push(row.get(0).map_err(decode_err)?);
                }
            }
            doomed
        };
        {
            let mut del = tx.prepare_cached("DELETE FROM join_tokens WHERE token_sha256 = ?1")?;
            for hash in &doomed {
                del.execute([hash])?;
            }
        }
        tx.commit()?;
        Ok(doomed.len())
    }
}
