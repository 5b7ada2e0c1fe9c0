//! The [`EnrolmentStore`] implementation for [`SqliteStore`]. Every read-check-write runs in
//! one IMMEDIATE transaction, so two hubs (or two requests) cannot both redeem one token.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::row::{decode_err, is_duplicate};
use super::SqliteStore;
use crate::clock;
use crate::store::enrolment::{check_transition, parse_time, prunable, refusal, validate_token};
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
        let token = tx
            .prepare_cached(
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
            .map_err(decode_err)?;
        let Some(mut token) = token else {
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
