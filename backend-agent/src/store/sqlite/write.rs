//! Command inserts and updates inside a transaction, alone or as one group transaction with a
//! savepoint per write (see [`crate::store::writer`]).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::row::{decode_err, is_duplicate, to_i64, to_json, COLUMNS};
use crate::clock;
use crate::store::{CommandRecord, CommandState, StoreError, WriteOp};

/// Applies `ops` in one IMMEDIATE transaction; each op in its own savepoint, so one that fails
/// (a duplicate id, an unknown record) is rolled back alone. When the transaction itself
/// cannot begin or commit, every op fails with [`StoreError::Batch`] (nothing was written).
pub(super) fn batch(conn: &mut Connection, ops: &[WriteOp]) -> Vec<Result<bool, StoreError>> {
    let all_failed = |e: &rusqlite::Error| {
        ops.iter()
            .map(|_| Err(StoreError::Batch(e.to_string())))
            .collect()
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return all_failed(&e),
    };
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
            let done = match op {
                WriteOp::Insert(rec) => insert(&sp, rec).map(|()| true),
                WriteOp::Update { rec, expected } => update(&sp, rec, *expected),
            }?;
            sp.commit()?;
            Ok(done)
        });
        // A failed op's savepoint was rolled back when it dropped.
        out.push(outcome);
    }
    match tx.commit() {
        Ok(()) => out,
        Err(e) => all_failed(&e),
    }
}

/// Inserts a new command and its first status event.
pub(super) fn insert(conn: &Connection, rec: &CommandRecord) -> Result<(), StoreError> {
    let (error_code, error_message) = match &rec.error {
        Some(e) => (Some(&e.code), Some(&e.message)),
        None => (None, None),
    };
    conn.prepare_cached(&format!(
        "INSERT INTO commands ({COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
    ))?
    .execute(params![
        rec.command_id,
        rec.agent_id,
        rec.verb,
        to_json(&rec.args)?,
        rec.requested_by,
        rec.status.as_str(),
        rec.exit_code,
        rec.stdout,
        rec.stderr,
        rec.truncated,
        rec.created_at,
        rec.started_at,
        rec.finished_at,
        rec.duration_ms.map(to_i64),
        error_code,
        error_message,
        to_i64(rec.timeout_ms),
        rec.job_id,
    ])
    .map_err(|e| match e {
        e if is_duplicate(&e) => StoreError::Duplicate(rec.command_id.clone()),
        e => StoreError::Sqlite(e),
    })?;
    conn.prepare_cached("INSERT INTO command_events (command_id, status, at) VALUES (?1, ?2, ?3)")?
        .execute(params![rec.command_id, rec.status.as_str(), rec.created_at])?;
    Ok(())
}

/// Replaces the mutable fields of a command, only from `expected` when given; `false`: the
/// status moved on meanwhile.
pub(super) fn update(
    conn: &Connection,
    rec: &CommandRecord,
    expected: Option<CommandState>,
) -> Result<bool, StoreError> {
    let old: Option<String> = conn
        .prepare_cached("SELECT status FROM commands WHERE command_id = ?1")?
        .query_row([&rec.command_id], |row| row.get(0))
        .optional()
        .map_err(decode_err)?;
    let Some(old) = old else {
        return Err(StoreError::NotFound(rec.command_id.clone()));
    };
    if expected.is_some_and(|e| e.as_str() != old) {
        return Ok(false);
    }
    let (error_code, error_message) = match &rec.error {
        Some(e) => (Some(&e.code), Some(&e.message)),
        None => (None, None),
    };
    conn.prepare_cached(
        "UPDATE commands SET status = ?2, exit_code = ?3, stdout = ?4, stderr = ?5, \
         truncated = ?6, started_at = ?7, finished_at = ?8, duration_ms = ?9, \
         error_code = ?10, error_message = ?11 WHERE command_id = ?1",
    )?
    .execute(params![
        rec.command_id,
        rec.status.as_str(),
        rec.exit_code,
        rec.stdout,
        rec.stderr,
        rec.truncated,
        rec.started_at,
        rec.finished_at,
        rec.duration_ms.map(to_i64),
        error_code,
        error_message,
    ])?;
    if old != rec.status.as_str() {
        conn.prepare_cached(
            "INSERT INTO command_events (command_id, status, at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            rec.command_id,
            rec.status.as_str(),
            clock::now_rfc3339()
        ])?;
    }
    Ok(true)
}
