//! Authoritative agent labels, kept in `store_meta` under `agent_labels/<id>` as JSON: a few
//! rows per fleet need no table (and no schema migration) of their own.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

use super::row::{decode_err, to_json};
use crate::store::{Labels, StoreError};

/// `store_meta` key prefix of an agent's authoritative labels.
const KEY_PREFIX: &str = "agent_labels/";

/// Stores (replaces) `agent_id`'s labels.
pub(super) fn set(
    conn: &Connection,
    agent_id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR REPLACE INTO store_meta (key, value) VALUES (?1, ?2)")?
        .execute(params![format!("{KEY_PREFIX}{agent_id}"), to_json(labels)?])?;
    Ok(())
}

/// Every agent's stored labels; an undecodable row is an error naming the agent.
pub(super) fn all(conn: &Connection) -> Result<Vec<(String, Labels)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, value FROM store_meta WHERE substr(key, 1, length(?1)) = ?1",
    )?;
    let mut rows = stmt.query([KEY_PREFIX])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let key: String = row.get(0).map_err(decode_err)?;
        let value: String = row.get(1).map_err(decode_err)?;
        let id = key.strip_prefix(KEY_PREFIX).unwrap_or(&key).to_owned();
        let labels = serde_json::from_str(&value)
            .map_err(|e| StoreError::Corrupt(format!("labels of agent {id:?}: {e}")))?;
        out.push((id, labels));
    }
    Ok(out)
}
