//! Writing one command inside a caller's transaction: the insert with its first status
//! event, and the compare-and-set update. A group-commit `write_batch` can run several of
//! these in one transaction, one savepoint each.

use postgres::Transaction;

use super::row::{self, duplicate_as, to_i64, to_json, COLUMNS};
use crate::clock;
use crate::store::{CommandRecord, CommandState, StoreError};

/// `error.code`, `error.message` of `rec` as parameters.
fn error_params(rec: &CommandRecord) -> (Option<&str>, Option<&[u8]>) {
    match &rec.error {
        Some(e) => (Some(e.code.as_str()), Some(e.message.as_bytes())),
        None => (None, None),
    }
}

/// Inserts `rec` and its first status event inside a caller's transaction.
pub(super) fn insert_tx(tx: &mut Transaction<'_>, rec: &CommandRecord) -> Result<(), StoreError> {
    let (error_code, error_message) = error_params(rec);
    let args = to_json(&rec.args)?;
    let duration = rec.duration_ms.map(to_i64);
    let timeout = to_i64(rec.timeout_ms);
    tx.execute(
        &format!(
            "INSERT INTO commands ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        ),
        &[
            &rec.command_id,
            &rec.agent_id,
            &rec.verb,
            &args,
            &rec.requested_by,
            &rec.status.as_str(),
            &rec.exit_code,
            &rec.stdout.as_bytes(),
            &rec.stderr.as_bytes(),
            &rec.truncated,
            &rec.created_at,
            &rec.started_at,
            &rec.finished_at,
            &duration,
            &error_code,
            &error_message,
            &timeout,
            &rec.job_id,
        ],
    )
    .map_err(duplicate_as(&rec.command_id))?;
    tx.execute(
        "INSERT INTO command_events (command_id, status, at) VALUES ($1, $2, $3)",
        &[&rec.command_id, &rec.status.as_str(), &rec.created_at],
    )?;
    Ok(())
}

/// [`CommandStore::update_command_where`] inside a caller's transaction: `Ok(false)` when the
/// status moved on (nothing written). A group-commit `write_batch` runs these and
/// [`insert_tx`] in one transaction, one savepoint each.
pub(super) fn update_tx(
    tx: &mut Transaction<'_>,
    rec: &CommandRecord,
    expected: Option<CommandState>,
) -> Result<bool, StoreError> {
    let (error_code, error_message) = error_params(rec);
    let duration = rec.duration_ms.map(to_i64);
    // The row lock makes the compare-and-set atomic across connections and replicas: a
    // concurrent update waits here and then reads the status this one wrote.
    let old = tx.query_opt(
        "SELECT status FROM commands WHERE command_id = $1 FOR UPDATE",
        &[&rec.command_id],
    )?;
    let Some(old) = old else {
        return Err(StoreError::NotFound(rec.command_id.clone()));
    };
    let old: String = row::get(&old, 0, "command status")?;
    if expected.is_some_and(|e| e.as_str() != old) {
        return Ok(false);
    }
    tx.execute(
        "UPDATE commands SET status = $2, exit_code = $3, stdout = $4, stderr = $5, \
         truncated = $6, started_at = $7, finished_at = $8, duration_ms = $9, \
         error_code = $10, error_message = $11 WHERE command_id = $1",
        &[
            &rec.command_id,
            &rec.status.as_str(),
            &rec.exit_code,
            &rec.stdout.as_bytes(),
            &rec.stderr.as_bytes(),
            &rec.truncated,
            &rec.started_at,
            &rec.finished_at,
            &duration,
            &error_code,
            &error_message,
        ],
    )?;
    if old != rec.status.as_str() {
        tx.execute(
            "INSERT INTO command_events (command_id, status, at) VALUES ($1, $2, $3)",
            &[&rec.command_id, &rec.status.as_str(), &clock::now_rfc3339()],
        )?;
    }
    Ok(true)
}
