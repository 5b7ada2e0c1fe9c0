//! Execution: the agent runs the verbs of its own config (plus `ping` and `sysinfo`) and
//! nothing else, at most once per command id.
//!
//! ```text
//! command ─► Executor::submit
//!              ├─ running in this process already → ignored (its result will come)
//!              ├─ stored (finished earlier)        → the stored result again
//!              ├─ shutting down                    → rejected shutting_down
//!              ├─ unknown verb / bad args          → rejected unknown_verb / invalid_args
//!              ├─ over max_concurrency or per-minute quota → rejected rate_limited
//!              └─ task: audit command_requested (fsync, group commit) → journal `start`
//!                       (written; fsynced only without an audit log) → run (built-in |
//!                       process group) → fit to the hub's limit, sign once, audit
//!                       command_result → journal `finish` (fsync, group commit)
//!                       → results channel ─► live session
//!                                            (full or no session: stays pending
//!                                             in the store, sent after welcome)
//! ```
//!
//! Every arrival is audited (refusals and repeated ids too; see [`crate::audit`]); a command
//! whose `command_requested` record cannot be made durable does not run (`audit_failed`).
//! Results are signed when produced ([`crate::signing`]) and stored signed.
//!
//! The [`Executor`] lives for the whole process, across sessions. Every command task is owned
//! by the executor's running map (bounded by `max_concurrency`), removes itself when done, and
//! is cancelled or aborted by [`Executor::shutdown`].
//!
//! # Layout
//! - `admit`: the checks before a command runs (duplicates, verb, args, limits).
//! - [`verb`]: the verb table, argv substitution, environment, `run_as`.
//! - [`task`]: one command from start record to result.
//! - [`process`]: spawn, timeout/cancel, process-group kill, reaping.
//! - [`capture`]: capped stdout/stderr capture.
//! - [`builtin`]: `ping` and `sysinfo`.
//! - [`limits`]: `max_concurrency` and `commands_per_minute`.
//! - [`store`]: the command journal: started/finished/delivered records.
//! - [`outcome`]: result frames and error codes, fitting a result into a frame.
//! - `settings`: [`ExecSettings`].

mod admit;
pub mod builtin;
pub mod capture;
pub mod limits;
pub mod outcome;
pub mod process;
mod reconfigure;
mod settings;
pub mod store;
pub mod task;
pub mod verb;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentmesh_protocol::CommandFrame;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{debug, error, info, warn};

use crate::audit::AgentAudit;
use crate::config::GatewayConfig;
use crate::signing::Signer;
use admit::{interrupted, Admission};
use limits::Limits;
use outcome::{reply, unsealed};
use process::CancelReason;
use reconfigure::VerbTable;
use store::{AuditHint, LoadReport, Store};

pub use store::Outgoing;

pub use settings::ExecSettings;

/// Results waiting for a session; beyond it they wait in the store (see [`Results`]).
pub const RESULT_QUEUE: usize = 256;

/// How long shutdown lets running commands finish before cancelling them.
pub const COMMAND_GRACE: Duration = Duration::from_secs(10);

/// Why the executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The results directory (its journal) is unusable.
    #[error("agent.state_dir: cannot keep command results in {path}: {source}")]
    State {
        /// `state_dir/results`.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A verb cannot be prepared.
    #[error("verbs: {0}")]
    Verb(String),
}

/// What [`Executor::submit`] did with a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Answer this at once (refusal, or the stored result of a repeated id).
    Reply(Box<Outgoing>),
    /// Running; the result will come through [`Results`].
    Started,
    /// The same id is running in this process: ignored, its result will come.
    AlreadyRunning,
}

/// Finished results on their way to a session. Bounded; when it is full (or nobody reads it
/// while disconnected) results simply wait in the store, which a session reads on start and
/// whenever [`Executor::take_overflow`] says something was missed.
#[derive(Debug)]
pub struct Results {
    rx: mpsc::Receiver<Outgoing>,
}

impl Results {
    /// The next finished result.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        self.rx.recv().await
    }

    /// A finished result if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        self.rx.try_recv().ok()
    }
}

/// Runs commands; cheap to clone, one per process.
#[derive(Debug, Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    agent_id: String,
    state_dir: PathBuf,
    /// Replaced whole by a config reload ([`Executor::reconfigure`]).
    verbs: std::sync::RwLock<Arc<VerbTable>>,
    store: Arc<Store>,
    limits: Arc<Mutex<Limits>>,
    /// One entry per command task; the task removes its own entry when it ends.
    running: Mutex<HashMap<String, Running>>,
    results: mpsc::Sender<Outgoing>,
    overflowed: AtomicBool,
    accepting: AtomicBool,
    /// Number of running command tasks, for shutdown to wait on.
    active: watch::Sender<usize>,
    audit: Option<AgentAudit>,
    signer: Signer,
    /// The live (or last) hub's `max_message_bytes`: results are fitted to it before signing.
    hub_limit: AtomicUsize,
}

#[derive(Debug)]
struct Running {
    cancel: watch::Sender<Option<CancelReason>>,
    abort: AbortHandle,
}

impl Executor {
    /// Opens the result store of `config` and prepares its verbs. Blocking (it reads every
    /// stored record): call it before serving, or from `spawn_blocking`.
    pub fn open(config: &GatewayConfig) -> Result<(Executor, Results), ExecError> {
        Self::open_with(ExecSettings::from_config(config))
    }

    /// [`Executor::open`] from explicit settings.
    pub fn open_with(settings: ExecSettings) -> Result<(Executor, Results), ExecError> {
        let verbs = verb::table(&settings.verbs).map_err(ExecError::Verb)?;
        let hint = settings.audit.as_ref().map(|a| AuditHint {
            path: a.path().to_path_buf(),
            durable_seq: a.durable_seq(),
        });
        let (store, report) = Store::open(
            &settings.state_dir,
            settings.result_retention,
            settings.max_stored_results,
            hint,
        )
        .map_err(|source| ExecError::State {
            path: settings
                .state_dir
                .join(store::RESULTS_DIR)
                .display()
                .to_string(),
            source,
        })?;
        log_load(&report);
        let (tx, rx) = mpsc::channel(RESULT_QUEUE);
        let inner = Inner {
            agent_id: settings.agent_id,
            state_dir: settings.state_dir,
            verbs: std::sync::RwLock::new(Arc::new(verbs)),
            store: Arc::new(store),
            limits: Limits::new(settings.max_concurrency, settings.commands_per_minute),
            running: Mutex::new(HashMap::new()),
            results: tx,
            overflowed: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            active: watch::Sender::new(0),
            audit: settings.audit,
            signer: settings.signer,
            hub_limit: AtomicUsize::new(agentmesh_protocol::DEFAULT_MAX_MESSAGE_BYTES),
        };
        Ok((
            Executor {
                inner: Arc::new(inner),
            },
            Results { rx },
        ))
    }

    /// The durable record store.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The audit log, when there is one.
    pub fn audit(&self) -> Option<&AgentAudit> {
        self.inner.audit.as_ref()
    }

    /// The result signer.
    pub fn signer(&self) -> &Signer {
        &self.inner.signer
    }

    /// Sets the largest message the hub accepts (from `welcome`); results produced from now on
    /// are fitted to it before they are signed and stored.
    pub fn set_hub_limit(&self, max_message_bytes: usize) {
        self.inner
            .hub_limit
            .store(max_message_bytes, Ordering::Relaxed);
    }

    fn hub_limit(&self) -> usize {
        self.inner.hub_limit.load(Ordering::Relaxed)
    }

    /// Commands running now.
    pub fn running(&self) -> usize {
        *self.inner.active.borrow()
    }

    /// Whether a result could not be queued since the last call (the session should then send
    /// what the store holds undelivered).
    pub fn take_overflow(&self) -> bool {
        self.inner.overflowed.swap(false, Ordering::AcqRel)
    }

    /// Takes one command: answers it at once, starts it, or ignores a duplicate.
    pub async fn submit(&self, command: CommandFrame) -> Submitted {
        match self.admit(command) {
            Admission::Done(s) => s,
            Admission::Stored(id) => {
                let store = self.inner.store.clone();
                let key = id.clone();
                let stored = tokio::task::spawn_blocking(move || store.result(&key)).await;
                match stored {
                    Ok(Ok(Some(result))) => reply(result),
                    Ok(Ok(None)) => reply(unsealed(interrupted(&id))),
                    Ok(Err(e)) => {
                        error!(command.id = %id, error = %e, "cannot read a stored result");
                        reply(unsealed(outcome::failed(
                            &id,
                            "result_unavailable",
                            "this command already ran but its stored result cannot be read; \
                             it was not run again",
                        )))
                    }
                    Err(e) => {
                        error!(command.id = %id, error = %e, "result reader failed");
                        reply(unsealed(outcome::failed(
                            &id,
                            "result_unavailable",
                            "this command already ran; it was not run again",
                        )))
                    }
                }
            }
        }
    }

    /// Cancels a running command; `false` when it is not running here.
    pub fn cancel(&self, command_id: &str) -> bool {
        match lock(&self.inner.running).get(command_id) {
            Some(r) => {
                r.cancel.send_replace(Some(CancelReason::Hub));
                true
            }
            None => false,
        }
    }

    /// Stops accepting commands, lets running ones finish for up to `grace`, then cancels the
    /// rest (SIGTERM, SIGKILL) and waits for their results to be stored. Idempotent.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.accepting.store(false, Ordering::Release);
        if self.wait_idle(grace).await {
            self.flush_store().await;
            return;
        }
        let ids: Vec<String> = {
            let running = lock(&self.inner.running);
            for r in running.values() {
                r.cancel.send_replace(Some(CancelReason::Shutdown));
            }
            running.keys().cloned().collect()
        };
        warn!(
            count = ids.len(),
            "cancelling commands still running after the shutdown grace period"
        );
        // Killing takes at most the kill grace; then results are stored.
        if self
            .wait_idle(process::KILL_GRACE + process::OUTPUT_GRACE + Duration::from_secs(5))
            .await
        {
            self.flush_store().await;
            return;
        }
        let running = lock(&self.inner.running);
        error!(
            count = running.len(),
            "commands did not stop after being killed; abandoning them (recorded as interrupted \
             at the next start)"
        );
        for r in running.values() {
            r.abort.abort();
        }
    }

    /// Writes the delivery marks kept in memory.
    async fn flush_store(&self) {
        let store = self.inner.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot write delivery marks to the command journal"),
            Err(e) => warn!(error = %e, "journal flush failed"),
        }
    }

    async fn wait_idle(&self, limit: Duration) -> bool {
        let mut rx = self.inner.active.subscribe();
        let idle = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_ok();
        idle
    }

    /// Hands a finished result to whichever session is live.
    fn deliver(&self, result: Outgoing) {
        match self.inner.results.try_send(result) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(r)) => {
                self.inner.overflowed.store(true, Ordering::Release);
                debug!(command.id = %r.frame.command_id, "result queue full; the result waits in the store");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn remove_running(&self, id: &str) {
        let mut running = lock(&self.inner.running);
        running.remove(id);
        self.inner.active.send_replace(running.len());
    }
}

fn log_load(report: &LoadReport) {
    info!(
        loaded = report.loaded,
        migrated = report.migrated,
        skipped = report.skipped,
        pruned = report.pruned,
        "command result store opened"
    );
    for id in &report.interrupted {
        warn!(
            command.id = %id,
            "command was running when the agent stopped; recorded as failed (interrupted)"
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
