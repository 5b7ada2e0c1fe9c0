//! [`SqliteStore`]: the default store, one SQLite file at `[store].path`.
//!
//! WAL journal with `synchronous=NORMAL`: a crash of the process loses nothing, a power cut may
//! lose the last transactions (the audit log, not this store, is the durable record of
//! requests). The schema version lives in `PRAGMA user_version` ([`SCHEMA_VERSION`]); older
//! files are migrated at open, and a file from a newer build is refused rather than misread.
//! One connection behind a mutex: calls already run on the blocking pool, and SQLite
//! serialises writers anyway.
//!
//! # Layout
//! - this file: opening the file and the [`CommandStore`] implementation.
//! - `enrolment`: the [`EnrolmentStore`](crate::store::EnrolmentStore) implementation.
//! - `labels`: authoritative agent labels (rows of `store_meta`).
//! - `schema`: the versioned schema and its migrations.
//! - `write`: command inserts and updates, alone or as one group transaction.
//! - `row`: encoding records into columns and decoding rows back, distrusting stored data.

mod checkpoint;
mod enrolment;
mod labels;
mod row;
mod schema;
mod write;
impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating its directory, the file (mode 0600) and the schema
    /// as needed. Every error names the path.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |e: rusqlite::Error| StoreError::open(path, e);
        if path.is_dir() {
            return Err(StoreError::open(path, "it is a directory"));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                let msg = format!("cannot create directory {}: {e}", dir.display());
                StoreError::open(path, std::io::Error::new(e.kind(), msg))
            })?;
        }
        create_private(path).map_err(|e| StoreError::open(path, e))?;
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // The first statement reads the header: a file that is not a database fails here.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), journal_mode = %mode, "store is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        schema::migrate(&mut conn).map_err(|e| match e {
            StoreError::Sqlite(e) => StoreError::open(path, e),
            other => StoreError::open(path, other.to_string()),
        })?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the commands `select` (returning `command_id, job_id`) picks, with their
    /// events and the jobs they emptied, in one transaction.
    fn delete_selected(
        &self,
        select: &str,
        params: impl rusqlite::Params,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let doomed: Vec<(String, Option<String>)> = {
            let mut stmt = tx.prepare(select)?;
            let rows = stmt.query_map(params, |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<Result<_, _>>().map_err(decode_err)?
        };
        let mut jobs: Vec<&String> = Vec::new();
        {
            let mut del_events =
                tx.prepare_cached("DELETE FROM command_events WHERE command_id = ?1")?;
            let mut del_command =
                tx.prepare_cached("DELETE FROM commands WHERE command_id = ?1")?;
            for (id, job) in &doomed {
                del_events.execute([id])?;
                del_command.execute([id])?;
                jobs.extend(job);
            }
            jobs.sort_unstable();
            jobs.dedup();
            // Only jobs that lost commands here: a job just created may not have any yet.
            let mut del_job = tx.prepare_cached(
                "DELETE FROM jobs WHERE job_id = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM commands WHERE job_id = ?1)",
            )?;
            for job in jobs {
                del_job.execute([job])?;
            }
        }
        tx.commit()?;
        Ok(doomed.len())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled back its transaction on unwind.
        crate::sync::lock(&self.conn)
    }
}

/// Creates an empty file readable only by us, so command output is not world-readable (SQLite
/// gives its WAL files the same mode). An existing path is left alone.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl CommandStore for SqliteStore {
    fn insert_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        write::insert(&tx, rec)?;
        tx.commit()?;
        Ok(())
    }

    fn update_command_where(
        &self,
        rec: &CommandRecord,
        expected: Option<CommandState>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done = write::update(&tx, rec, expected)?;
        tx.commit()?;
        Ok(done)
    }

    fn write_batch(&self, ops: &[WriteOp]) -> Vec<Result<bool, StoreError>> {
        write::batch(&mut self.conn(), ops)
    }

    fn get_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let conn = self.conn();
        let sql = format!("SELECT {COLUMNS} FROM commands WHERE command_id = ?1");
        Ok(query_commands(&conn, &sql, [id])?.into_iter().next())
    }

    fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError> {
        let mut conds = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        for (cond, value) in q.sql_conditions() {
            args.push(Value::Text(value));
            conds.push(format!("{cond} ?{}", args.len()));
        }
        let columns = if q.with_output {
            COLUMNS.to_owned()
        } else {
            // Same positions, so the row decoder is unchanged; the outputs are never read.
            COLUMNS.replace("stdout, stderr", "'' AS stdout, '' AS stderr")
        };
        let mut sql = format!("SELECT {columns} FROM commands");
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        let limit = i64::try_from(q.effective_limit()).unwrap_or(i64::MAX);
        args.push(Value::Integer(limit));
        sql.push_str(&format!(" ORDER BY command_id DESC LIMIT ?{}", args.len()));
        query_commands(&self.conn(), &sql, params_from_iter(args))
    }

    fn command_events(&self, id: &str) -> Result<Vec<(CommandState, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT status, at FROM command_events WHERE command_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([id])?;
        let owner = format!("event of command {id:?}");
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let status: String = row.get(0).map_err(decode_err)?;
            out.push((
                parse_state(&owner, &status)?,
                row.get(1).map_err(decode_err)?,
            ));
        }
        Ok(out)
    }

    fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached(
                "INSERT INTO jobs (job_id, verb, args, requested_by, selector, max_concurrency, \
                 max_errors, created_at, targets) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                job.job_id,
                job.verb,
                to_json(&job.args)?,
                job.requested_by,
                to_json(&job.selector)?,
                job.max_concurrency,
                job.max_errors,
                job.created_at,
                to_json(&job.targets)?,
            ])
            .map_err(|e| match e {
                e if is_duplicate(&e) => StoreError::Duplicate(job.job_id.clone()),
                e => StoreError::Sqlite(e),
            })?;
        Ok(())
    }

    fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT job_id, verb, args, requested_by, selector, max_concurrency, max_errors, \
             created_at, targets FROM jobs WHERE job_id = ?1",
        )?;
        let mut rows = stmt.query([id])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        Ok(Some(read_job(id, row)?))
    }

    fn unfinished_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM commands WHERE status IN ({}) ORDER BY command_id",
            state_list(false)
        );
        query_commands(&self.conn(), &sql, [])
    }

    fn prune(&self, keep_newest: usize) -> Result<usize, StoreError> {
        let sql = format!(
            "SELECT command_id, job_id FROM commands WHERE status IN ({}) \
             ORDER BY command_id DESC LIMIT -1 OFFSET ?1",
            state_list(true)
        );
        let offset = i64::try_from(keep_newest).unwrap_or(i64::MAX);
        self.delete_selected(&sql, [offset])
    }

    fn prune_finished_before(&self, cutoff_rfc3339: &str) -> Result<usize, StoreError> {
        let sql = format!(
            "SELECT command_id, job_id FROM commands WHERE status IN ({}) \
             AND finished_at IS NOT NULL AND finished_at < ?1",
            state_list(true)
        );
        self.delete_selected(&sql, [cutoff_rfc3339])
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached(
                "INSERT OR REPLACE INTO store_meta (key, value) VALUES ('heartbeat', ?1)",
            )?
            .execute([clock::now_rfc3339()])?;
        Ok(())
    }

    fn set_agent_labels(
        &self,
        agent_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        labels::set(&self.conn(), agent_id, labels)
    }

    fn agent_labels(&self) -> Result<Vec<(String, Labels)>, StoreError> {
        labels::all(&self.conn())
    }
}

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::store::Labels;
use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, TransactionBehavior};

use super::{
    CommandQuery, CommandRecord, CommandState, CommandStore, JobRecord, StoreError, WriteOp,
};
use crate::clock;
use row::{
    decode_err, is_duplicate, parse_state, query_commands, read_job, state_list, to_json, COLUMNS,
};
pub use schema::SCHEMA_VERSION;

/// How long a call waits for another writer's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`CommandStore`] and [`EnrolmentStore`](crate::store::EnrolmentStore) in a SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}
