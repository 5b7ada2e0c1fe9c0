//! [`PostgresStore`]: the store in PostgreSQL (`[store] url = "postgres://…"`), shared by
//! every backend replica (docs/store-postgres.md).
//!
//! Same semantics as [`SqliteStore`](crate::store::SqliteStore), across connections and
//! replicas: every read-check-write runs in one transaction that first locks what it decides
//! on — the command row (`SELECT … FOR UPDATE`) for compare-and-set status updates, the token
//! row for redemptions, and a per-agent advisory lock for enrolment changes, so two replicas
//! cannot both redeem one token or enrol past a revocation. Connections come from a small
//! bounded [`pool`]. No TLS to PostgreSQL yet (`NoTls`): run it on the same host or a private
//! network.
//!
//! # Layout
//! - this file: opening (connect, migrate) and the [`CommandStore`] implementation.
//! - `pool`: the bounded connection pool.
//! - `schema`: the versioned schema and its migrations.
//! - `write`: inserting and compare-and-set updating a command inside a transaction.
//! - `row`: encoding records into parameters and decoding rows, distrusting stored data.
//! - `enrolment`: the [`EnrolmentStore`](crate::store::EnrolmentStore) implementation.
//! - `checkpoint`: the [`CheckpointStore`](crate::store::CheckpointStore) implementation.

mod audit_mirror;
mod checkpoint;
mod enrolment;
mod pool;
mod row;
mod schema;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::Transaction;

use super::{
    CommandQuery, CommandRecord, CommandState, CommandStore, JobRecord, Labels, Store, StoreError,
};
use crate::clock;
use crate::config::DatabaseUrl;
use pool::{Pool, Pooled};
use row::{
    duplicate_as, parse_state, read_commands, read_job, states, to_json, COLUMNS, JOB_COLUMNS,
};
pub use schema::SCHEMA_VERSION;
use write::{insert_tx, update_tx};

/// How long opening a connection may take before the call fails (unless the URL sets
/// `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a pooled connection to come free before it fails.
pub const POOL_WAIT: Duration = Duration::from_secs(5);

/// `store_meta` key prefix of an agent's authoritative labels.
const LABELS_PREFIX: &str = "agent_labels/";

/// A [`CommandStore`], [`EnrolmentStore`](crate::store::EnrolmentStore) and
/// [`CheckpointStore`](crate::store::CheckpointStore) in a PostgreSQL database.
pub struct PostgresStore {
    pool: Pool,
    target: String,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.target)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (at most `pool_size` connections), creating or migrating the schema
    /// as needed. Errors name the URL without its password.
    pub fn open(url: &DatabaseUrl, pool_size: usize) -> Result<Self, StoreError> {
        let target = url.redacted();
        let open_err = |e: &dyn fmt::Display| StoreError::open(Path::new(&target), e.to_string());
        let mut config: postgres::Config = url.expose().parse().map_err(|e| open_err(&e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("backend-agent");
        }
        let store = PostgresStore {
            pool: Pool::new(config, pool_size, POOL_WAIT),
            target: target.clone(),
        };
        let mut client = store.pool.get().map_err(|e| open_err(&e))?;
        schema::migrate(&mut client).map_err(|e| open_err(&e))?;
        drop(client);
        Ok(store)
    }

    /// The URL, password hidden.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn client(&self) -> Result<Pooled<'_>, StoreError> {
        self.pool.get()
    }

    /// Runs `f` in one transaction on a pooled connection and commits it if `f` succeeds
    /// (an error or an early `Ok` from a refusal rolls back through `f`'s own return).
    fn in_tx<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        let (out, commit) = f(&mut tx)?;
        if commit {
            tx.commit()?;
        } else {
            tx.rollback()?;
        }
        Ok(out)
    }

    /// Deletes the commands `select` (returning `command_id, job_id`) picks, with their
    /// events and the jobs they emptied, in one transaction.
    fn delete_selected(
        &self,
        select: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<usize, StoreError> {
        self.in_tx(|tx| {
            let rows = tx.query(select, params)?;
            let mut ids = Vec::with_capacity(rows.len());
            let mut jobs = Vec::new();
            for r in &rows {
                ids.push(row::get::<String>(r, 0, "command")?);
                jobs.extend(row::get::<Option<String>>(r, 1, "command")?);
            }
            jobs.sort_unstable();
            jobs.dedup();
            tx.execute(
                "DELETE FROM command_events WHERE command_id = ANY($1)",
                &[&ids],
            )?;
            tx.execute("DELETE FROM commands WHERE command_id = ANY($1)", &[&ids])?;
            // Only jobs that lost commands here: a job just created may not have any yet.
            tx.execute(
                "DELETE FROM jobs j WHERE j.job_id = ANY($1) \
                 AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.job_id = j.job_id)",
                &[&jobs],
            )?;
            Ok((ids.len(), true))
        })
    }
}

impl Store {
    /// Connects to PostgreSQL at `url` (creating and migrating the schema as needed).
    pub async fn open_postgres(url: DatabaseUrl, pool_size: usize) -> Result<Self, StoreError> {
        let store = tokio::task::spawn_blocking(move || PostgresStore::open(&url, pool_size))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))??;
        Ok(Store::new(store))
    }
}

impl CommandStore for PostgresStore {
    fn insert_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        self.in_tx(|tx| insert_tx(tx, rec).map(|()| ((), true)))
    }

    fn update_command_where(
        &self,
        rec: &CommandRecord,
        expected: Option<CommandState>,
    ) -> Result<bool, StoreError> {
        self.in_tx(|tx| update_tx(tx, rec, expected).map(|done| (done, done)))
    }

    fn get_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM commands WHERE command_id = $1");
        let rows = self.client()?.query(&sql, &[&id])?;
        Ok(read_commands(&rows)?.into_iter().next())
    }

    fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError> {
        let mut conds = Vec::new();
        let mut args: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        for (cond, value) in q.sql_conditions() {
            args.push(Box::new(value));
            conds.push(format!("{cond} ${}", args.len()));
        }
        let columns = if q.with_output {
            COLUMNS.to_owned()
        } else {
            // Same positions, so the row decoder is unchanged; the outputs are never read.
            COLUMNS.replace("stdout, stderr", "''::bytea AS stdout, ''::bytea AS stderr")
        };
        let mut sql = format!("SELECT {columns} FROM commands");
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        args.push(Box::new(
            i64::try_from(q.effective_limit()).unwrap_or(i64::MAX),
        ));
        sql.push_str(&format!(" ORDER BY command_id DESC LIMIT ${}", args.len()));
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref()).collect();
        let rows = self.client()?.query(&sql, &params)?;
        read_commands(&rows)
    }

    fn command_events(&self, id: &str) -> Result<Vec<(CommandState, String)>, StoreError> {
        let rows = self.client()?.query(
            "SELECT status, at FROM command_events WHERE command_id = $1 ORDER BY seq",
            &[&id],
        )?;
        let owner = format!("event of command {id:?}");
        rows.iter()
            .map(|r| {
                let status: String = row::get(r, 0, &owner)?;
                Ok((parse_state(&owner, &status)?, row::get(r, 1, &owner)?))
            })
            .collect()
    }

    fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let (args, selector, targets) = (
            to_json(&job.args)?,
            to_json(&job.selector)?,
            to_json(&job.targets)?,
        );
        self.client()?
            .execute(
                &format!(
                    "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ),
                &[
                    &job.job_id,
                    &job.verb,
                    &args,
                    &job.requested_by,
                    &selector,
                    &i64::from(job.max_concurrency),
                    &i64::from(job.max_errors),
                    &job.created_at,
                    &targets,
                ],
            )
            .map_err(duplicate_as(&job.job_id))?;
        Ok(())
    }

    fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1");
        let row = self.client()?.query_opt(&sql, &[&id])?;
        row.map(|r| read_job(id, &r)).transpose()
    }

    fn unfinished_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM commands WHERE status = ANY($1) ORDER BY command_id");
        let rows = self.client()?.query(&sql, &[&states(false)])?;
        read_commands(&rows)
    }

    fn prune(&self, keep_newest: usize) -> Result<usize, StoreError> {
        let offset = i64::try_from(keep_newest).unwrap_or(i64::MAX);
        self.delete_selected(
            "SELECT command_id, job_id FROM commands WHERE status = ANY($1) \
             ORDER BY command_id DESC OFFSET $2",
            &[&states(true), &offset],
        )
    }

    fn prune_finished_before(&self, cutoff_rfc3339: &str) -> Result<usize, StoreError> {
        self.delete_selected(
            "SELECT command_id, job_id FROM commands WHERE status = ANY($1) \
             AND finished_at IS NOT NULL AND finished_at < $2",
            &[&states(true), &cutoff_rfc3339],
        )
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.client()?.execute(
            "INSERT INTO store_meta (key, value) VALUES ('heartbeat', $1) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&clock::now_rfc3339()],
        )?;
        Ok(())
    }

    fn set_agent_labels(
        &self,
        agent_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.client()?.execute(
            "INSERT INTO store_meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&format!("{LABELS_PREFIX}{agent_id}"), &to_json(labels)?],
        )?;
        Ok(())
    }

    fn agent_labels(&self) -> Result<Vec<(String, Labels)>, StoreError> {
        let rows = self.client()?.query(
            "SELECT key, value FROM store_meta WHERE starts_with(key, $1) ORDER BY key",
            &[&LABELS_PREFIX],
        )?;
        rows.iter()
            .map(|r| {
                let key: String = row::get(r, 0, "agent labels")?;
                let id = key.strip_prefix(LABELS_PREFIX).unwrap_or(&key).to_owned();
                let value: String = row::get(r, 1, &format!("labels of agent {id:?}"))?;
                let labels = serde_json::from_str(&value)
                    .map_err(|e| StoreError::Corrupt(format!("labels of agent {id:?}: {e}")))?;
                Ok((id, labels))
            })
            .collect()
    }
}
