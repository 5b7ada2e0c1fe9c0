//! The embedded store: command history, status transitions, fan-out jobs and enrolment state
//! (pins, revoked agents, join tokens).
//!
//! Storage sits behind two small synchronous traits, [`CommandStore`] and [`EnrolmentStore`]
//! (together a [`Backend`]), so another database can be plugged in later. [`SqliteStore`] is
//! the default (the file at `[store].path`); [`MemoryStore`] has the same semantics and exists
//! for tests of other modules. Async code talks to either through [`Store`], which runs every
//! call on tokio's blocking pool so a slow disk never stalls the runtime.
//!
//! Records are stored and returned as-is: [`CommandRecord`] serialises to exactly the flat
//! command record of the HTTP API (README, "Operator API"), and its `args` must already be redacted by the
//! caller (secret params hashed). Data read back is never trusted: an unknown status or bad
//! JSON in a row is a [`StoreError::Corrupt`], not a panic.
//!
//! # Layout
//! - this file: the [`CommandStore`] and [`Backend`] traits, [`StoreError`] and the async
//!   [`Store`] (command methods).
//! - `record`: [`CommandRecord`], [`CommandState`], [`JobRecord`], [`CommandQuery`].
//! - [`checkpoint`]: the [`CheckpointStore`] trait: signed audit checkpoints.
//! - [`enrolment`]: the [`EnrolmentStore`] trait, [`PinRecord`], [`JoinToken`], [`Redeem`] and
//!   the async enrolment methods of [`Store`].
//! - [`sqlite`]: the SQLite implementation (WAL, schema versioned by `PRAGMA user_version`).
//! - [`postgres`]: the PostgreSQL implementation (`[store] url`, shared by replicas;
//!   docs/store-postgres.md).
//! - [`memory`]: the in-memory implementation.

pub mod audit_mirror;
pub mod checkpoint;
pub mod enrolment;
pub mod memory;
pub mod postgres;
mod record;
pub mod sqlite;
#[cfg(any(test, feature = "conformance"))]
#[doc(hidden)]
pub mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use audit_mirror::AuditMirrorStore;
pub use checkpoint::{CheckpointStore, CHECKPOINTS_KEPT};
pub use enrolment::{
    renewal_refusal, EnrolmentStore, JoinToken, PinRecord, PinState, Redeem, RenewalRecord,
    RenewalStart, UnknownPinState, USED_TOKEN_RETENTION,
};
pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use record::{CommandQuery, CommandRecord, CommandState, ErrorInfo, JobRecord, UnknownState};
pub use sqlite::SqliteStore;

/// An agent's labels, key to value.
pub type Labels = BTreeMap<String, String>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened, created or migrated.
    #[error("cannot open store {}: {source}", path.display())]
    Open {
        /// The store file.
        path: PathBuf,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database reported an error.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A record with this id already exists.
    #[error("store: duplicate id {0:?}")]
    Duplicate(String),
    /// No record with this id.
    #[error("store: no record with id {0:?}")]
    NotFound(String),
    /// The change is not allowed from the record's current state (e.g. reviving a revoked pin).
    #[error("store: conflict: {0}")]
    Conflict(String),
    /// A stored row cannot be decoded.
    #[error("store: corrupt data: {0}")]
    Corrupt(String),
    /// The blocking task running the call failed.
    #[error("store: background task failed: {0}")]
    Join(String),
    /// PostgreSQL reported an error (`[store] url`).
    #[error("store: postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The database cannot be reached or no pooled connection came free in time.
    #[error("store: unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// True when the database cannot be reached right now (no connection, connection lost,
    /// server shutting down or starting): the call may succeed if retried later, so the API
    /// answers 503 `store_unavailable` rather than 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Postgres(e) => {
                let sqlstate = e.code().map(|c| c.code()).unwrap_or("");
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                    // Class 08: connection exception; 57P01-3: shutdown or not yet accepting.
                    || sqlstate.starts_with("08")
                    || matches!(sqlstate, "57P01" | "57P02" | "57P03")
            }
            _ => false,
        }
    }
    /// An [`StoreError::Open`] for `path`.
    pub fn open(path: &Path, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Open {
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

/// Storage for command history. Methods block; async code goes through [`Store`].
pub trait CommandStore: Send + Sync + 'static {
    /// Records a new command (and its first status event); [`StoreError::Duplicate`] if the
    /// id exists.
    fn insert_command(&self, rec: &CommandRecord) -> Result<(), StoreError>;
    /// Replaces the mutable fields (status, exit code, output, times, error) of an existing
    /// command — only while the stored status is still `expected` when one is given
    /// (compare-and-set) — appending a status event when the status changed. `Ok(false)`: the
    /// status moved on meanwhile; [`StoreError::NotFound`] if the id is unknown. Identity
    /// fields (agent, verb, args, ...) are left untouched.
    fn update_command_where(
        &self,
        rec: &CommandRecord,
        expected: Option<CommandState>,
    ) -> Result<bool, StoreError>;
    /// [`CommandStore::update_command_where`] without a condition.
    fn update_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        self.update_command_where(rec, None).map(|_| ())
    }
    /// [`CommandStore::update_command_where`] only from `expected`.
    fn update_command_if(
        &self,
        rec: &CommandRecord,
        expected: CommandState,
    ) -> Result<bool, StoreError> {
        self.update_command_where(rec, Some(expected))
    }
    /// One command.
    fn get_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError>;
    /// Commands matching `q`, newest first, at most `q.effective_limit()`.
    fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError>;
    /// Status transitions of a command, oldest first, with their RFC 3339 times.
    fn command_events(&self, id: &str) -> Result<Vec<(CommandState, String)>, StoreError>;
    /// Records a fan-out job; [`StoreError::Duplicate`] if the id exists.
    fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError>;
    /// One job.
    fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Commands not in a final state, oldest first (recovery at start).
    fn unfinished_commands(&self) -> Result<Vec<CommandRecord>, StoreError>;
    /// Deletes finished commands older than the newest `keep_newest` finished ones (with
    /// their events, and jobs left without commands); unfinished commands are never deleted.
    /// Returns how many commands were deleted.
    fn prune(&self, keep_newest: usize) -> Result<usize, StoreError>;
    /// Deletes finished commands that finished before `cutoff_rfc3339` (compared as text, so
    /// within one second of the cutoff the order may be off; retention is counted in days),
    /// with their events and emptied jobs. Returns how many commands were deleted.
    fn prune_finished_before(&self, cutoff_rfc3339: &str) -> Result<usize, StoreError>;
    /// A cheap real write, for `/ready`.
    fn check_writable(&self) -> Result<(), StoreError>;
    /// Stores the authoritative labels an admin set for `agent_id` (replacing earlier ones).
    fn set_agent_labels(
        &self,
        agent_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError>;
    /// Every agent's stored authoritative labels.
    fn agent_labels(&self) -> Result<Vec<(String, Labels)>, StoreError>;
}

/// Everything a store implements; blanket-implemented, so `Store::new` takes any type with
/// all the traits.
pub trait Backend:
    CommandStore + EnrolmentStore + CheckpointStore + audit_mirror::AuditMirrorStore
{
}

impl<T: CommandStore + EnrolmentStore + CheckpointStore + audit_mirror::AuditMirrorStore> Backend
    for T
{
}

/// Async handle to a [`Backend`]: each call runs on the blocking pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn Backend>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Wraps a store implementation.
    pub fn new(inner: impl Backend) -> Self {
        Store {
            inner: Arc::new(inner),
        }
    }

    /// Opens (creating and migrating as needed) the SQLite store at `path`.
    pub async fn open_sqlite(path: PathBuf) -> Result<Self, StoreError> {
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))??;
        Ok(Store::new(store))
    }

    /// Opens the store `[store]` names: PostgreSQL when `url` is set, else the SQLite file.
    pub async fn open(config: &crate::config::StoreConfig) -> Result<Self, StoreError> {
        match &config.url {
            Some(url) => Self::open_postgres(url.clone(), config.pool_size).await,
            None => Self::open_sqlite(config.path.clone()).await,
        }
    }

    /// An empty in-memory store (tests, `dev` experiments).
    pub fn memory() -> Self {
        Store::new(MemoryStore::new())
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(inner.as_ref()))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// See [`CommandStore::insert_command`].
    pub async fn insert_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.run(move |s| s.insert_command(&rec)).await
    }

    /// See [`CommandStore::update_command`].
    pub async fn update_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.run(move |s| s.update_command(&rec)).await
    }

    /// See [`CommandStore::update_command_if`].
    pub async fn update_command_if(
        &self,
        rec: &CommandRecord,
        expected: CommandState,
    ) -> Result<bool, StoreError> {
        let rec = rec.clone();
        self.run(move |s| s.update_command_if(&rec, expected)).await
    }

    /// See [`CommandStore::get_command`].
    pub async fn get_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let id = id.to_owned();
        self.run(move |s| s.get_command(&id)).await
    }

    /// See [`CommandStore::list_commands`].
    pub async fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError> {
        let q = q.clone();
        self.run(move |s| s.list_commands(&q)).await
    }

    /// See [`CommandStore::command_events`].
    pub async fn command_events(
        &self,
        id: &str,
    ) -> Result<Vec<(CommandState, String)>, StoreError> {
        let id = id.to_owned();
        self.run(move |s| s.command_events(&id)).await
    }

    /// See [`CommandStore::insert_job`].
    pub async fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let job = job.clone();
        self.run(move |s| s.insert_job(&job)).await
    }

    /// See [`CommandStore::get_job`].
    pub async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let id = id.to_owned();
        self.run(move |s| s.get_job(&id)).await
    }

    /// See [`CommandStore::unfinished_commands`].
    pub async fn unfinished_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
        self.run(|s| s.unfinished_commands()).await
    }

    /// See [`CommandStore::prune`].
    pub async fn prune(&self, keep_newest: usize) -> Result<usize, StoreError> {
        self.run(move |s| s.prune(keep_newest)).await
    }

    /// See [`CommandStore::prune_finished_before`].
    pub async fn prune_finished_before(&self, cutoff_rfc3339: &str) -> Result<usize, StoreError> {
        let cutoff = cutoff_rfc3339.to_owned();
        self.run(move |s| s.prune_finished_before(&cutoff)).await
    }

    /// See [`CommandStore::set_agent_labels`].
    pub async fn set_agent_labels(
        &self,
        agent_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let (id, labels) = (agent_id.to_owned(), labels.clone());
        self.run(move |s| s.set_agent_labels(&id, &labels)).await
    }

    /// See [`CommandStore::agent_labels`].
    pub async fn agent_labels(&self) -> Result<Vec<(String, Labels)>, StoreError> {
        self.run(|s| s.agent_labels()).await
    }

    /// See [`CommandStore::check_writable`].
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.run(|s| s.check_writable()).await
    }
}
