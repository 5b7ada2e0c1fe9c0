//! One command, from its durable start record to its result.
//!
//! Before anything runs, the `command_requested` audit record is made durable (one fsync,
//! group-committed with other commands) and the journal's `start` written (fsynced only when
//! there is no audit log: then it is the at-most-once marker): if either fails the command does
//! not run. The result is fitted to the hub's message limit, signed once and audited, then
//! stored (one fsync) before the task leaves the running map, so a repeated id always finds
//! the command either running or stored; the same signed frame is what gets sent. Logs carry the id, verb, requester,
//! status and duration — never the arguments, which may be secret.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::{CommandFrame, ResultFrame};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info};

use super::limits::Permit;
use super::outcome;
use super::process::{self, CancelReason, Invocation};
use super::store::Admitting;
use super::store::{self, Meta};
use super::verb::{self, ProgramVerb, Verb, VerbKind};
use super::{Executor, Outgoing};
use crate::audit::Durable;

/// Removes the command from the executor's running map however the task ends (even aborted).
#[derive(Debug)]
pub struct RunningGuard {
    executor: Executor,
    id: String,
}

impl RunningGuard {
    pub(super) fn new(executor: Executor, id: String) -> Self {
        RunningGuard { executor, id }
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.executor.remove_running(&self.id);
    }
}

/// Runs one admitted command to its stored, delivered result.
pub(super) async fn execute(
    executor: Executor,
    verb: Arc<Verb>,
    command: CommandFrame,
    audited: Option<(Durable, Admitting)>,
    cancel: watch::Receiver<Option<CancelReason>>,
    permit: Permit,
    guard: RunningGuard,
) {
    let meta = Meta {
        command_id: command.command_id.clone(),
        verb: command.verb.clone(),
        requested_by: command.requested_by.clone(),
    };
    let store = executor.inner.store.clone();
    let (audit_seq, admitting) = match audited {
        Some((durable, admitting)) => (Some(durable.await), Some(admitting)),
        None => (None, None),
    };
    let audit_failed = audit_seq.as_ref().and_then(|r| r.as_ref().err());
    let recorded = match (&audit_failed, audit_seq.as_ref()) {
        (Some(e), _) => Err(std::io::Error::other(format!("audit log: {e}"))),
        (None, seq) => {
            let seq = seq.and_then(|r| r.as_ref().ok()).copied();
            let (store, meta) = (store.clone(), meta.clone());
            blocking(move || store.record_started(&meta, seq)).await
        }
    };
    drop(admitting);
    let started_ms = recorded.as_ref().map_or_else(|_| store::now_ms(), |ms| *ms);
    let started_wall = OffsetDateTime::now_utc();
    let started = Instant::now();
    info!(
        command.id = %meta.command_id,
        command.verb = %meta.verb,
        requested_by = %meta.requested_by,
        "command started"
    );
    let mut result = match &recorded {
        Err(e) if audit_failed.is_some() => {
            error!(error = %e, "cannot audit the command durably; not running it");
            outcome::failed(
                &meta.command_id,
                "audit_failed",
                "the agent could not write the command to its audit log, so it did not run it",
            )
        }
        Err(e) => {
            error!(error = %e, "cannot record the command start durably; not running it");
            outcome::failed(
                &meta.command_id,
                "store_failed",
                "the agent could not record the command durably, so it did not run it \
                 (at-most-once)",
            )
        }
        Ok(_) => run(&executor, &verb, &command, cancel).await,
    };
    drop(permit);
    result.command_id.clone_from(&meta.command_id);
    result.started_at = Some(outcome::rfc3339(started_wall));
    result.duration_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    let limit = executor.hub_limit();
    outcome::fit_result(&mut result, limit);
    let sealed = executor.inner.signer.ensure_signed(&mut result);
    if let Some(audit) = &executor.inner.audit {
        audit.result(Some(&meta.requested_by), &result, sealed.signature(), None);
    }
    let sealed = sealed.signature().map(|s| (s.agent_pin.clone(), limit));
    if recorded.is_ok() {
        let (store, meta, stored, seal) =
            (store.clone(), meta.clone(), result.clone(), sealed.clone());
        let stored = blocking(move || {
            let seal = seal.as_ref().map(|(pin, limit)| (pin.as_str(), *limit));
            store.record_finished(&meta, started_ms, &stored, seal)
        });
        if let Err(e) = stored.await {
            error!(error = %e, "cannot store the command result durably; delivering it anyway");
        }
    }
    info!(
        command.id = %meta.command_id,
        command.verb = %meta.verb,
        requested_by = %meta.requested_by,
        status = result.status.as_str(),
        exit_code = result.exit_code,
        code = result.error.as_ref().map(|e| e.code.as_str()),
        duration_ms = result.duration_ms,
        truncated = result.truncated,
        "command finished"
    );
    crate::metrics::global().command_finished(
        &meta.verb,
        result.status.as_str(),
        started.elapsed(),
    );
    drop(guard);
    executor.deliver(Outgoing {
        frame: result,
        sealed,
    });
}

async fn run(
    executor: &Executor,
    verb: &Verb,
    command: &CommandFrame,
    cancel: watch::Receiver<Option<CancelReason>>,
) -> ResultFrame {
    let id = &command.command_id;
    match &verb.kind {
        VerbKind::Ping => outcome::ok_stdout(id, super::builtin::ping(&executor.inner.agent_id)),
        VerbKind::Sysinfo => {
            let dir = executor.inner.state_dir.clone();
            match blocking(move || Ok(super::builtin::sysinfo(&dir))).await {
                Ok(stdout) => outcome::ok_stdout(id, stdout),
                Err(e) => outcome::failed(id, "internal", format!("sysinfo failed: {e}")),
            }
        }
        VerbKind::Program(program) => run_program(program, command, cancel).await,
    }
}

async fn run_program(
    verb: &ProgramVerb,
    command: &CommandFrame,
    cancel: watch::Receiver<Option<CancelReason>>,
) -> ResultFrame {
    let id = &command.command_id;
    let config = &verb.config;
    let user = match &config.run_as {
        None => None,
        Some(name) => {
            let name = name.clone();
            match blocking(move || Ok(verb::resolve_run_as(&name))).await {
                Ok(Ok(user)) => user,
                Ok(Err(message)) => return outcome::failed(id, "run_as_failed", message),
                Err(e) => return outcome::failed(id, "run_as_failed", e.to_string()),
            }
        }
    };
    let verb_timeout = Duration::from_secs(config.timeout_secs);
    let timeout = command
        .timeout_ms
        .map_or(verb_timeout, |ms| Duration::from_millis(ms.max(1)))
        .min(verb_timeout);
    let invocation = Invocation {
        program: config.program.clone(),
        args: verb.argv.render(&command.args),
        env: verb::environment(&config.env, |name| std::env::var_os(name)),
        working_dir: config.working_dir.clone(),
        user,
        timeout,
        max_output_bytes: config.max_output_bytes,
    };
    match process::run(&invocation, cancel).await {
        Ok(ran) => outcome::from_process(id, &ran, timeout),
        Err(e) => outcome::failed(
            id,
            "spawn_failed",
            format!("cannot start {}: {e}", config.program.display()),
        ),
    }
}

/// Runs blocking work (file I/O, user lookups) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
