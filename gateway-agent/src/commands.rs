//! What a session does with `command` and `cancel` frames, and how results reach the hub.
//!
//! Commands go to the process-wide [`Executor`]; results come back through its [`Results`]
//! channel or, for anything finished while no session was live, from its durable store.
//!
//! Delivery (protocol v1 has no acknowledgement of results):
//! - a result counts as delivered once written to a live session; that is kept in memory and
//!   written to the journal lazily, never fsynced (a mark lost in a crash only resends);
//! - `hello.pending_results` lists stored results never delivered (at most
//!   [`PENDING_IN_HELLO`], oldest first);
//! - right after `welcome` the session sends every undelivered result, and again every result
//!   delivered less than [`RESEND_WINDOW`] before the previous session ended — one written into
//!   a connection that died right after is then not lost; the hub ignores duplicates. After a
//!   restart that session's end is unknown, so the window is counted back from the last
//!   delivery instead (which can only resend more, never less).
//!
//! A result is fitted and signed once, when it is produced, and sent as it was stored. Just
//! before it is written, [`Commands::prepare`] only checks it was signed by the current key
//! for the live hub's message limit; only if not (a renewal or a new hub limit since, or a
//! result that could not be signed) is it fitted and signed again (see [`crate::signing`]),
//! and that signature is audited like any other.

use std::time::Duration;

use agentmesh_protocol::CommandFrame;
use tracing::{debug, error, warn};

use crate::exec::store::{self, Stage};
use crate::exec::{Executor, Outgoing, Results, Submitted};
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
    pub frames: Vec<Outgoing>,
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
    pub async fn handle_command(&mut self, command: CommandFrame) -> Option<Outgoing> {
        match self.executor.submit(command).await {
            Submitted::Reply(result) => Some(*result),
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
            if store.stage(&result.frame.command_id) != Some(Stage::Finished) {
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

    /// A stored result, read back from the journal.
    pub async fn stored(&self, id: &str) -> Option<Outgoing> {
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
    pub async fn next_result(&mut self) -> Outgoing {
        loop {
            match self.results.recv().await {
                Some(r) if self.executor.store().is_delivered(&r.frame.command_id) => continue,
                Some(r) => return r,
                // The executor holds the sender; it cannot close while we hold the executor.
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// A finished, undelivered result if one is queued.
    pub fn try_next_result(&mut self) -> Option<Outgoing> {
        while let Some(r) = self.results.try_recv() {
            if !self.executor.store().is_delivered(&r.frame.command_id) {
                return Some(r);
            }
        }
        None
    }

    /// Records that `id`'s result was written to a live session (in memory; the journal
    /// gets it lazily).
    pub fn delivered(&self, id: &str) {
        if let Err(e) = self.executor.store().mark_delivered(id) {
            warn!(command.id = %id, error = %e, "cannot record a delivery");
        }
    }

    /// Makes sure `result` fits `out_limit` and is signed, as sent, by the current key: a no-op
    /// for a result signed for exactly that key and limit when it was produced.
    pub fn prepare(&self, result: &mut Outgoing, out_limit: usize) {
        let signer = self.executor.signer();
        if let (Some((pin, limit)), Some(current)) = (&result.sealed, signer.pin()) {
            if *pin == current && *limit == out_limit {
                return;
            }
        }
        let frame = &mut result.frame;
        fit_result(frame, out_limit);
        match signer.ensure_signed(frame) {
            Sealed::Signed(signature) => {
                debug!(command.id = %frame.command_id, "result signed at delivery");
                if let Some(audit) = self.executor.audit() {
                    audit.result(None, frame, Some(&signature), Some("signed at delivery"));
                }
                result.sealed = Some((signature.agent_pin, out_limit));
            }
            Sealed::AlreadySigned => result.sealed = signer.pin().map(|pin| (pin, out_limit)),
            Sealed::Unsigned => result.sealed = None,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::exec::{outcome, ExecSettings};
    use crate::signing::Signer;
    use mesh_certs::{Ca, Validity};

    #[tokio::test]
    async fn a_result_is_signed_once_and_again_only_for_a_new_key_or_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test CA").unwrap();
        ca.issue_agent("edge-01", Validity::days(1))
            .unwrap()
            .save(dir.path())
            .unwrap();
        let signer = Signer::from_files(&dir.path().join("key.pem"), &dir.path().join("cert.pem"));
        let pin = signer.pin().unwrap();
        let settings = ExecSettings {
            signer: signer.clone(),
            ..ExecSettings::for_tests("edge-01", dir.path().join("state"))
        };
        let (executor, results) = Executor::open_with(settings).unwrap();
        let commands = Commands::new(executor, results);
        // As produced: signed by the current key for the live limit — sent as it is.
        let mut frame = outcome::ok_stdout("c-1", "hello".into());
        signer.ensure_signed(&mut frame);
        let mut out = Outgoing {
            frame: frame.clone(),
            sealed: Some((pin.clone(), 1000)),
        };
        commands.prepare(&mut out, 1000);
        assert_eq!(out.frame, frame, "untouched: no second signature");
        // The hub's limit changed: fitted and signed again for it.
        frame.signature = Some("stale".into());
        out = Outgoing {
            frame: frame.clone(),
            sealed: Some((pin.clone(), 1000)),
        };
        commands.prepare(&mut out, 2000);
        assert_ne!(out.frame.signature.as_deref(), Some("stale"));
        assert_eq!(out.sealed, Some((pin.clone(), 2000)));
        // Stored unsigned (an interrupted command): signed when sent.
        out = Outgoing {
            frame: outcome::failed("c-2", "interrupted", "x"),
            sealed: None,
        };
        commands.prepare(&mut out, 2000);
        assert!(out.frame.signature.is_some());
        assert_eq!(out.sealed, Some((pin, 2000)));
    }
}
