//! Admission: the checks a command passes, in order, before a task is started for it.
//!
//! Done with the running map locked, so two frames with the same id cannot both start; the
//! map is only ever locked briefly (no `await` under it). Every arrival is audited here, in
//! arrival order: a refusal with its signed `rejected` result (and `rate_limited`), a repeated
//! id as a duplicate, and an admitted command's `command_requested` is queued durably for the
//! task to await before it runs.

use std::sync::atomic::Ordering;

use agentmesh_protocol::{CommandFrame, ResultFrame, VerbSpec};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument as _};

use super::store::{self, Stage};
use super::{limits, lock, outcome, task, Executor, Running, Submitted};

impl Executor {
    /// Decides what happens to `command`; starts its task when it passes every check.
    pub(super) fn admit(&self, command: CommandFrame) -> Admission {
        let inner = &self.inner;
        let id = command.command_id.clone();
        let verbs = self.verbs();
        let spec = verbs.get(&command.verb).map(|v| &v.spec);
        let reject = |code: &str, message: String| self.refuse(&command, spec, code, message);
        let duplicate = |what: &str| {
            if let Some(audit) = &inner.audit {
                audit.requested(&command, spec, ("duplicate", what));
            }
        };
        if !store::valid_command_id(&id) {
            return reject(
                "invalid_command_id",
                "command ids are 1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'".to_owned(),
            );
        }
        let mut running = lock(&inner.running);
        if running.contains_key(&id) {
            debug!(command.id = %id, "repeated command id is still running; ignored");
            duplicate("running");
            return Admission::Done(Submitted::AlreadyRunning);
        }
        match inner.store.stage(&id) {
            Some(Stage::Finished) => {
                info!(command.id = %id, "repeated command id; answering with the stored result");
                duplicate("stored");
                return Admission::Stored(id);
            }
            Some(Stage::Started) => {
                // Recorded as started but not running here: the run was lost (its outcome
                // could not be stored). Never run it again.
                warn!(command.id = %id, "repeated command id with no stored outcome");
                duplicate("lost");
                return Admission::Done(outcome::reply(outcome::unsealed(interrupted(&id))));
            }
            None => {}
        }
        if !inner.accepting.load(Ordering::Acquire) {
            return reject(
                "shutting_down",
                "the agent is shutting down and accepts no new commands".to_owned(),
            );
        }
        let Some(verb) = verbs.get(&command.verb).cloned() else {
            return reject(
                "unknown_verb",
                format!("this agent does not offer verb {:?}", command.verb),
            );
        };
        if let Err(e) = verb.spec.validate_args(&command.args) {
            return reject("invalid_args", e.to_string());
        }
        let permit = match limits::admit(&inner.limits, tokio::time::Instant::now()) {
            Ok(p) => p,
            Err(e) => return reject("rate_limited", e.to_string()),
        };
        // Counted before the audit record gets its seq (see `store::Store::admitting`).
        let audited = inner.audit.as_ref().map(|a| {
            let admitting = inner.store.admitting();
            (a.requested_durable(&command, &verb.spec), admitting)
        });
        let (cancel_tx, cancel_rx) = watch::channel(None);
        let span = tracing::info_span!("command", command.id = %id, command.verb = %command.verb);
        let guard = task::RunningGuard::new(self.clone(), id.clone());
        // Spawned while the map is locked, so the task cannot remove its entry before it exists.
        let handle = tokio::spawn(
            task::execute(
                self.clone(),
                verb,
                command,
                audited,
                cancel_rx,
                permit,
                guard,
            )
            .instrument(span),
        );
        running.insert(
            id,
            Running {
                cancel: cancel_tx,
                abort: handle.abort_handle(),
            },
        );
        inner.active.send_replace(running.len());
        Admission::Done(Submitted::Started)
    }
}

impl Executor {
    /// Refuses `command`: logs it, audits it, answers with a signed `rejected` result.
    fn refuse(
        &self,
        command: &CommandFrame,
        spec: Option<&VerbSpec>,
        code: &str,
        message: String,
    ) -> Admission {
        let id = &command.command_id;
        info!(
            command.id = %id,
            command.verb = %command.verb,
            requested_by = %command.requested_by,
            status = "rejected",
            code,
            "command rejected"
        );
        let mut result = outcome::rejected(id, code, message);
        let sealed = self.inner.signer.ensure_signed(&mut result);
        // A refusal is a few hundred bytes: it fits any limit the hub can set.
        let sealed_for = sealed
            .signature()
            .map(|s| (s.agent_pin.clone(), self.hub_limit()));
        if let Some(audit) = &self.inner.audit {
            audit.requested(command, spec, ("rejected", code));
            if code == "rate_limited" {
                // The message starts with the config key of the limit that refused it.
                let limit = result
                    .error
                    .as_ref()
                    .and_then(|e| e.message.split(':').next())
                    .unwrap_or_default();
                audit.rate_limited(command, limit);
            }
            audit.result(
                Some(&command.requested_by),
                &result,
                sealed.signature(),
                None,
            );
        }
        Admission::Done(outcome::reply(super::Outgoing {
            frame: result,
            sealed: sealed_for,
        }))
    }
}

/// Where admission left a command.
pub(super) enum Admission {
    /// Decided.
    Done(Submitted),
    /// A repeated id whose result is stored: read it (off the async workers).
    Stored(String),
}

/// The answer to a repeated id whose run was lost.
pub(super) fn interrupted(id: &str) -> ResultFrame {
    outcome::failed(
        id,
        "interrupted",
        "this command was started earlier but its outcome was lost (the agent stopped while it \
         ran); it was not run again",
    )
}
