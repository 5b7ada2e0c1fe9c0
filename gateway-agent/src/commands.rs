//! What a session does with `command` and `cancel` frames, and how results reach the hub.
//!
//! Commands go to the process-wide [`Executor`]; results come back through its [`Results`]
//! channel or, for anything finished while no session was live, from its durable store.
//!
//! Delivery (protocol v1 has no acknowledgement of results):
//! - a result counts as delivered once written to a live session; that is recorded durably;
//! - `hello.pending_results` lists stored results never delivered (at most
//!   [`PENDING_IN_HELLO`], oldest first);
//! - right after `welcome` the session sends every undelivered result, and again every result
//!   delivered less than [`RESEND_WINDOW`] before the previous session ended — one written into
//!   a connection that died right after is then not lost; the hub ignores duplicates. After a
//!   restart that session's end is unknown, so the window is counted back from the last
//!   delivery instead (which can only resend more, never less).
//!
//! Just before a result is written, [`Commands::prepare`] fits it to the live hub's message
//! limit and makes sure it carries a signature by the current key over exactly those bytes
//! (see [`crate::signing`]); a signature made at that point is audited like any other.

use std::time::Duration;

use agentmesh_protocol::{CommandFrame, ResultFrame};
use tracing::{debug, error, warn};

use crate::exec::store::{self, Stage};
use crate::exec::{Executor, Results, Submitted};
use crate::signing::Sealed;

pub use crate::exec::outcome::fit_result;

/// Results delivered this long before a session ended are sent again in the next one.
pub const RESEND_WINDOW: Duration = Duration::from_secs(120);

/// Most ids listed in `hello.pending_results` (keeps `hello` small; all are sent anyway).
pub const PENDING_IN_HELLO: usize = 1000;

/// The agent's command handling for one process (lives across sessions).
#[derive(Debug)]
pub struct Commands {
    executor: Executor,
    results: Results,
    resend_since_ms: Option<u64>,
}

/// What a new session sends first.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Results that only exist in memory (their store write failed).
    pub frames: Vec<ResultFrame>,
    /// Stored results to send, read one at a time with [`Commands::stored`].
    pub ids: Vec<String>,
}

impl Commands {
    /// Session-side handling over `executor` and its result channel.
    pub fn new(executor: Executor, results: Results) -> Self {
        let resend_since_ms = executor
            .store()
            .last_delivery_ms()
            .map(|t| t.saturating_sub(window_ms()));
        Commands {
            executor,
            results,
            resend_since_ms,
        }
    }

    /// The executor.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Ids for `hello.pending_results`: finished, never delivered.
    pub fn pending_results(&self) -> Vec<String> {
        let mut ids = self.executor.store().undelivered();
        ids.truncate(PENDING_IN_HELLO);
        ids
    }

    /// Takes a `command`; returns the frame to answer with at once, if any (otherwise the
    /// result comes later from [`Commands::next_result`], or never for an ignored duplicate).
    pub async fn handle_command(&mut self, command: CommandFrame) -> Option<ResultFrame> {
        match self.executor.submit(command).await {
            Submitted::Reply(result) => Some(result),
            Submitted::Started | Submitted::AlreadyRunning => None,
        }
    }

    /// Takes a `cancel`.
    pub fn handle_cancel(&self, command_id: &str) {
        if !self.executor.cancel(command_id) {
            debug!(command.id = %command_id, "cancel for a command that is not running here");
        }
    }

    /// What to send right after `welcome`: everything undelivered, and what the previous
    /// session may have lost.
    pub fn backlog(&mut self) -> Backlog {
        let store = self.executor.store();
        // Cleared first: anything that overflows from now on is caught by the next check.
        self.executor.take_overflow();
        let mut backlog = Backlog::default();
        while let Some(result) = self.results.try_recv() {
            // Stored ones are listed below; only a result the store lost is sent from memory.
            if store.stage(&result.command_id) != Some(Stage::Finished) {
                backlog.frames.push(result);
            }
        }
        let mut ids = match self.resend_since_ms.take() {
            Some(since) => store.delivered_since(since),
            None => Vec::new(),
        };
        for id in store.undelivered() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        backlog.ids = ids;
        backlog
    }

    /// Undelivered results the store holds (after [`Commands::take_overflow`] said some
    /// were not queued).
    pub fn undelivered(&self) -> Vec<String> {
        self.executor.store().undelivered()
    }

    /// Whether results were kept out of the channel since the last check.
    pub fn take_overflow(&self) -> bool {
        self.executor.take_overflow()
    }

    /// A stored result, read from disk.
    pub async fn stored(&self, id: &str) -> Option<ResultFrame> {
        let store = self.executor.store().clone();
        let key = id.to_owned();
        match tokio::task::spawn_blocking(move || store.result(&key)).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                error!(command.id = %id, error = %e, "cannot read a stored result; not sending it");
                None
            }
            Err(e) => {
                error!(command.id = %id, error = %e, "result reader failed");
                None
            }
        }
    }

    /// The next finished result not yet delivered. Cancel-safe.
    pub async fn next_result(&mut self) -> ResultFrame {
        loop {
            match self.results.recv().await {
                Some(r) if self.executor.store().is_delivered(&r.command_id) => continue,
                Some(r) => return r,
                // The executor holds the sender; it cannot close while we hold the executor.
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// A finished, undelivered result if one is queued.
    pub fn try_next_result(&mut self) -> Option<ResultFrame> {
        while let Some(r) = self.results.try_recv() {
            if !self.executor.store().is_delivered(&r.command_id) {
                return Some(r);
            }
        }
        None
    }

    /// Records, durably, that `id`'s result was written to a live session.
    pub async fn delivered(&self, id: &str) {
        let store = self.executor.store().clone();
        let key = id.to_owned();
        match tokio::task::spawn_blocking(move || store.mark_delivered(&key)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(command.id = %id, error = %e, "cannot record a delivery"),
            Err(e) => warn!(command.id = %id, error = %e, "delivery recorder failed"),
        }
    }

    /// Fits `result` into `out_limit` and makes sure it is signed, as sent, by the current key.
    pub fn prepare(&self, result: &mut ResultFrame, out_limit: usize) {
        fit_result(result, out_limit);
        if let Sealed::Signed(signature) = self.executor.signer().ensure_signed(result) {
            debug!(command.id = %result.command_id, "result signed at delivery");
            if let Some(audit) = self.executor.audit() {
                audit.result(None, result, Some(&signature), Some("signed at delivery"));
            }
        }
    }

    /// The session ended now: the next one resends what this one delivered recently.
    pub fn session_ended(&mut self) {
        self.resend_since_ms = Some(store::now_ms().saturating_sub(window_ms()));
    }
}

fn window_ms() -> u64 {
    u64::try_from(RESEND_WINDOW.as_millis()).unwrap_or(u64::MAX)
}
