//! Records to parameters and rows back to records. Stored data is not trusted: a bad value
//! is a [`StoreError::Corrupt`] naming the record, never a panic.

use postgres::error::SqlState;
use postgres::types::FromSql;
use postgres::Row;

use crate::store::{CommandRecord, CommandState, ErrorInfo, JobRecord, StoreError};

/// The `commands` columns, in the order [`read_command`] expects.
pub(super) const COLUMNS: &str =
    "command_id, agent_id, verb, args, requested_by, status, exit_code, \
    stdout, stderr, truncated, created_at, started_at, finished_at, duration_ms, error_code, \
    error_message, timeout_ms, job_id";

/// The `jobs` columns, in the order [`read_job`] expects.
pub(super) const JOB_COLUMNS: &str = "job_id, verb, args, requested_by, selector, \
    max_concurrency, max_errors, created_at, targets";

/// Column `i` of `row`; a value of the wrong type is corruption of `owner`.
pub(super) fn get<'a, T: FromSql<'a>>(
    row: &'a Row,
    i: usize,
    owner: &str,
) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("{owner}: column {i}: {e}")))
}

/// Whether `e` is a unique-key violation (the id exists).
pub(super) fn is_duplicate(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Maps a unique-key violation to [`StoreError::Duplicate`] of `id`.
pub(super) fn duplicate_as(id: &str) -> impl FnOnce(postgres::Error) -> StoreError + '_ {
    move |e| {
        if is_duplicate(&e) {
            StoreError::Duplicate(id.to_owned())
        } else {
            StoreError::Postgres(e)
        }
    }
}

/// Durations past `i64::MAX` ms are absurd; saturate rather than fail.
pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The names of the states whose finality is `final_`, as a `TEXT[]` parameter.
pub(super) fn states(final_: bool) -> Vec<&'static str> {
    CommandState::ALL
        .iter()
        .filter(|s| s.is_final() == final_)
        .map(|s| s.as_str())
        .collect()
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

/// Output stored as bytes (a `TEXT` cannot hold NUL) back to the `String` it was.
fn text_of(owner: &str, field: &str, bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|e| StoreError::Corrupt(format!("{owner}: {field}: {e}")))
}

pub(super) fn read_command(row: &Row) -> Result<CommandRecord, StoreError> {
    let id: String = get(row, 0, "command")?;
    let owner = format!("command {id:?}");
    let o = owner.as_str();
    let out_of_range = |field: &str| StoreError::Corrupt(format!("{owner}: {field} out of range"));
    let error = match (
        get::<Option<String>>(row, 14, o)?,
        get::<Option<Vec<u8>>>(row, 15, o)?,
    ) {
        (Some(code), message) => Some(ErrorInfo {
            code,
            message: text_of(o, "error_message", message.unwrap_or_default())?,
        }),
        (None, _) => None,
    };
    let timeout_ms: i64 = get(row, 16, o)?;
    Ok(CommandRecord {
        agent_id: get(row, 1, o)?,
        verb: get(row, 2, o)?,
        args: parse_json(o, "args", &get::<String>(row, 3, o)?)?,
        requested_by: get(row, 4, o)?,
        status: parse_state(o, &get::<String>(row, 5, o)?)?,
        exit_code: get(row, 6, o)?,
        stdout: text_of(o, "stdout", get(row, 7, o)?)?,
        stderr: text_of(o, "stderr", get(row, 8, o)?)?,
        truncated: get(row, 9, o)?,
        created_at: get(row, 10, o)?,
        started_at: get(row, 11, o)?,
        finished_at: get(row, 12, o)?,
        duration_ms: get::<Option<i64>>(row, 13, o)?
            .map(u64::try_from)
            .transpose()
            .map_err(|_| out_of_range("duration_ms"))?,
        error,
        timeout_ms: u64::try_from(timeout_ms).map_err(|_| out_of_range("timeout_ms"))?,
        job_id: get(row, 17, o)?,
        command_id: id,
    })
}

/// Decodes every row of a `SELECT {COLUMNS} ...`.
pub(super) fn read_commands(rows: &[Row]) -> Result<Vec<CommandRecord>, StoreError> {
    rows.iter().map(read_command).collect()
}

/// Decodes a `SELECT {JOB_COLUMNS}` row.
pub(super) fn read_job(id: &str, row: &Row) -> Result<JobRecord, StoreError> {
    let owner = format!("job {id:?}");
    let o = owner.as_str();
    let count = |i| -> Result<u32, StoreError> {
        let v: i64 = get(row, i, o)?;
        u32::try_from(v)
            .map_err(|_| StoreError::Corrupt(format!("{owner}: column {i} out of range")))
    };
    Ok(JobRecord {
        job_id: get(row, 0, o)?,
        verb: get(row, 1, o)?,
        args: parse_json(o, "args", &get::<String>(row, 2, o)?)?,
        requested_by: get(row, 3, o)?,
        selector: parse_json(o, "selector", &get::<String>(row, 4, o)?)?,
        max_concurrency: count(5)?,
        max_errors: count(6)?,
        created_at: get(row, 7, o)?,
        targets: parse_json(o, "targets", &get::<String>(row, 8, o)?)?,
    })
}
