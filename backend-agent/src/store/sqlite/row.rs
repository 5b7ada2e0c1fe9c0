//! Records to columns and rows back to records. Stored data is not trusted: a bad value is a
//! [`StoreError::Corrupt`] naming the record, never a panic.

use rusqlite::Connection;

use crate::store::{CommandRecord, CommandState, ErrorInfo, JobRecord, StoreError};

/// The `commands` columns, in the order [`read_command`] expects.
pub(super) const COLUMNS: &str =
    "command_id, agent_id, verb, args, requested_by, status, exit_code, \
    stdout, stderr, truncated, created_at, started_at, finished_at, duration_ms, error_code, \
    error_message, timeout_ms, job_id";

/// Wrong column types in a row are corruption, not a database failure.
pub(super) fn decode_err(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(e.to_string()),
        other => StoreError::Sqlite(other),
    }
}

pub(super) fn is_duplicate(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// Durations past `i64::MAX` ms are absurd; saturate rather than fail.
pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `'a', 'b'` for the states whose finality is `final_`.
pub(super) fn state_list(final_: bool) -> String {
    CommandState::ALL
        .iter()
        .filter(|s| s.is_final() == final_)
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn parse_state(owner: &str, s: &str) -> Result<CommandState, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("{owner}: {e}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    owner: &str,
    field: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{owner}: bad {field}: {e}")))
}

pub(super) fn to_json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

pub(super) fn read_command(row: &rusqlite::Row<'_>) -> Result<CommandRecord, StoreError> {
    let id: String = row.get(0).map_err(decode_err)?;
    let owner = format!("command {id:?}");
    let get_text = |i| row.get::<_, String>(i).map_err(decode_err);
    let get_opt = |i| row.get::<_, Option<String>>(i).map_err(decode_err);
    let get_int = |i| row.get::<_, Option<i64>>(i).map_err(decode_err);
    let out_of_range = |field: &str| StoreError::Corrupt(format!("{owner}: {field} out of range"));
    let error = match (get_opt(14)?, get_opt(15)?) {
        (Some(code), message) => Some(ErrorInfo {
            code,
            message: message.unwrap_or_default(),
        }),
        (None, _) => None,
    };
    let timeout_ms: i64 = row.get(16).map_err(decode_err)?;
    Ok(CommandRecord {
        agent_id: get_text(1)?,
        verb: get_text(2)?,
        args: parse_json(&owner, "args", &get_text(3)?)?,
        requested_by: get_text(4)?,
        status: parse_state(&owner, &get_text(5)?)?,
        exit_code: get_int(6)?
            .map(i32::try_from)
            .transpose()
            .map_err(|_| out_of_range("exit_code"))?,
        stdout: get_text(7)?,
        stderr: get_text(8)?,
        truncated: row.get(9).map_err(decode_err)?,
        created_at: get_text(10)?,
        started_at: get_opt(11)?,
        finished_at: get_opt(12)?,
        duration_ms: get_int(13)?
            .map(u64::try_from)
            .transpose()
            .map_err(|_| out_of_range("duration_ms"))?,
        error,
        timeout_ms: u64::try_from(timeout_ms).map_err(|_| out_of_range("timeout_ms"))?,
        job_id: get_opt(17)?,
        command_id: id,
    })
}

/// Runs a `SELECT {COLUMNS} ...` query and decodes every row.
pub(super) fn query_commands(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<CommandRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read_command(row)?);
    }
    Ok(out)
}

/// Decodes a `jobs` row (`SELECT job_id, verb, args, requested_by, selector, max_concurrency,
/// max_errors, created_at, targets`).
pub(super) fn read_job(id: &str, row: &rusqlite::Row<'_>) -> Result<JobRecord, StoreError> {
    let owner = format!("job {id:?}");
    let text = |i| row.get::<_, String>(i).map_err(decode_err);
    Ok(JobRecord {
        job_id: text(0)?,
        verb: text(1)?,
        args: parse_json(&owner, "args", &text(2)?)?,
        requested_by: text(3)?,
        selector: parse_json(&owner, "selector", &text(4)?)?,
        max_concurrency: row.get(5).map_err(decode_err)?,
        max_errors: row.get(6).map_err(decode_err)?,
        created_at: text(7)?,
        targets: parse_json(&owner, "targets", &text(8)?)?,
    })
}
