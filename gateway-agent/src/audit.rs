//! The agent's own audit log (format: `docs/audit.md`): hash-chained JSON Lines at `[audit] path`
//! (default `state_dir/gateway-audit.log`), written through [`agentmesh_audit::AuditLog`]
//! with fsync and group commit. `gateway-agent audit verify FILE...` checks it.
//!
//! | kind | when | details |
//! |---|---|---|
//! | `command_requested` | a `command` frame arrived; **durable before the command runs** | `verb`, `args` (`secret` and undeclared params as salted hashes), `timeout_ms`, `issued_at`; `duplicate` for a repeated id; `rejected` for a refused one |
//! | `command_result` | a result was signed (when produced, or again at delivery) | `status`, `exit_code`, `duration_ms`, `truncated`, `error`, `result_sha256`, and `signature`/`public_key`/`agent_pin` (checked by `audit verify`) or `unsigned` |
//! | `rate_limited` | a command refused by `[limits]` | `verb`, `limit` |
//! | `agent_connected` / `agent_disconnected` | a session with the hub started / ended | `session_id`, `hub_pin`, `agent_pin` / `code`, `reason` |
//! | `auth_failed` | the hub's pin is not in `server_pins`, or the hub refused us (4001) | `presented_pin`, `expected_pins` / `code`, `reason` |
//! | `revoked` | the hub closed with 4004 | `code`, `reason` |
//! | `enrolled` | `gateway-agent enroll`, or a renewal installed a new certificate | `source`, `pin` |
//!
//! Secrets never reach the log: a `secret` param (and any param the verb does not declare,
//! whose nature is unknown) is recorded as `agentmesh_audit::salted_secret`,
//! `sha256:<salt hex>:<hash hex>` with a fresh random salt per value stored beside the hash:
//! not guessable from a table, and checkable with `agentmesh_audit::secret_matches` by whoever
//! knows the value, after restarts too. Connection failures that repeat unchanged (a wrong hub pin retried with
//! backoff for hours) are recorded once per [`REPEAT_EVERY`], so an outage cannot fill the disk.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_audit::{
    kinds, AuditError, AuditEvent, AuditLog, AuditOptions, OpenReport, ResultSignature,
};
use agentmesh_protocol::verbs::arg_to_argv;
use agentmesh_protocol::{CommandFrame, ResultFrame, VerbSpec};
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// An unchanged connection failure is recorded again only after this long.
pub const REPEAT_EVERY: Duration = Duration::from_secs(3600);

/// Records the agent's audit queue holds; beyond it an append is refused with `Overloaded`,
/// exactly as at the library default, only sooner. An agent writes a few records per command
/// and runs at most 1,024 at once; the default (65,536) is preallocated by the bounded
/// channel and cost ~8 MiB of RSS per agent (found by `bench`, see `bench/README.md`).
pub const QUEUE_CAPACITY: usize = 1024;

/// A durable append on its way to disk.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), AuditError>> + Send>>;

/// The agent's audit log; cheap to clone.
#[derive(Clone)]
pub struct AgentAudit {
    inner: Arc<Inner>,
}

struct Inner {
    log: AuditLog,
    agent_id: String,
    /// The last connection failure recorded, and when.
    last_failure: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for AgentAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentAudit")
            .field("path", &self.inner.log.path())
            .finish_non_exhaustive()
    }
}

impl AgentAudit {
    /// Opens (creating it if needed) the log at `path` and logs what opening found (a torn
    /// tail cut after a crash, or a broken chain left as evidence).
    pub fn open(path: &Path, agent_id: &str) -> Result<AgentAudit, AuditError> {
        let options = AuditOptions {
            queue_capacity: QUEUE_CAPACITY,
            ..AuditOptions::default()
        };
        let (log, report) = AuditLog::open(path, options)?;
        log_report(path, &report);
        Ok(AgentAudit {
            inner: Arc::new(Inner {
                log,
                agent_id: agent_id.to_owned(),
                last_failure: Mutex::new(None),
            }),
        })
    }

    /// `command_requested`, queued now, durable once the returned future completes.
    pub fn requested_durable(&self, command: &CommandFrame, spec: &VerbSpec) -> Durable {
        let event = self.requested_event(command, Some(spec), None);
        let pending = self.inner.log.append_durable(event);
        Box::pin(async move { pending.await.map(|_| ()) })
    }

    /// `command_requested` for a command that will not run: refused (`note` = the code) or a
    /// repeated id (`note` = `duplicate: ...`).
    pub fn requested(&self, command: &CommandFrame, spec: Option<&VerbSpec>, note: (&str, &str)) {
        self.append(self.requested_event(command, spec, Some(note)));
    }

    /// `rate_limited`: `command` was refused by the agent's own `limit`.
    pub fn rate_limited(&self, command: &CommandFrame, limit: &str) {
        self.append(
            self.event(kinds::RATE_LIMITED)
                .actor(command.requested_by.as_str())
                .command(command.command_id.as_str())
                .details(json!({"verb": command.verb, "limit": limit})),
        );
    }

    /// `command_result` for a result just signed (or that could not be signed).
    pub fn result(
        &self,
        requested_by: Option<&str>,
        result: &ResultFrame,
        signature: Option<&ResultSignature>,
        note: Option<&str>,
    ) {
        let mut details = json!({
            "status": result.status.as_str(),
            "exit_code": result.exit_code,
            "duration_ms": result.duration_ms,
            "truncated": result.truncated,
            "error": result.error.as_ref().map(|e| e.code.clone()),
        });
        match signature {
            Some(sig) => sig.insert_into(&mut details),
            None => {
                details["result_sha256"] = agentmesh_audit::result_digest(result).into();
                details["unsigned"] = true.into();
            }
        }
        if let Some(note) = note {
            details["note"] = note.into();
        }
        let mut event = self
            .event(kinds::COMMAND_RESULT)
            .command(result.command_id.as_str())
            .details(details);
        event.actor = requested_by.map(str::to_owned);
        self.append(event);
    }

    /// `agent_connected`.
    pub fn connected(&self, session_id: &str, hub_pin: Option<&str>, agent_pin: Option<&str>) {
        *lock(&self.inner.last_failure) = None;
        self.append(self.event(kinds::AGENT_CONNECTED).details(json!({
            "session_id": session_id,
            "hub_pin": hub_pin,
            "agent_pin": agent_pin,
        })));
    }

    /// `agent_disconnected`.
    pub fn disconnected(&self, session_id: &str, code: Option<u16>, reason: &str) {
        self.append(self.event(kinds::AGENT_DISCONNECTED).details(json!({
            "session_id": session_id,
            "code": code,
            "reason": reason,
        })));
    }

    /// `auth_failed`: the hub presented a pin not in `server_pins`.
    pub fn hub_pin_mismatch(&self, presented: &str, expected: &[String]) {
        self.failure(
            kinds::AUTH_FAILED,
            json!({"reason": "hub pin not in outbound.server_pins", "presented_pin": presented, "expected_pins": expected}),
        );
    }

    /// `auth_failed` (4001) or `revoked` (4004): the hub refused or dropped this agent.
    pub fn refused(&self, code: u16, reason: &str) {
        let kind = if code == agentmesh_protocol::close::REVOKED {
            kinds::REVOKED
        } else {
            kinds::AUTH_FAILED
        };
        self.failure(kind, json!({"code": code, "reason": reason}));
    }

    /// `enrolled`, durable: a new certificate (`pin`) was installed by `source`.
    pub async fn enrolled(&self, source: &str, pin: &str, extra: Value) {
        let mut details = json!({"source": source, "pin": pin});
        if let (Value::Object(d), Value::Object(e)) = (&mut details, extra) {
            d.extend(e);
        }
        let event = self.event(kinds::ENROLLED).details(details);
        if let Err(e) = self.inner.log.append_durable(event).await {
            error!(error = %e, "cannot write the enrolment to the audit log");
        }
    }

    /// Completes once everything appended so far is on disk.
    pub async fn flush(&self) {
        if let Err(e) = self.inner.log.flush().await {
            error!(error = %e, "cannot flush the audit log");
        }
    }

    fn failure(&self, kind: &str, details: Value) {
        let key = format!("{kind}{details}");
        {
            let mut last = lock(&self.inner.last_failure);
            if let Some((previous, at)) = last.as_ref() {
                if *previous == key && at.elapsed() < REPEAT_EVERY {
                    return;
                }
            }
            *last = Some((key, Instant::now()));
        }
        self.append(self.event(kind).details(details));
    }

    fn requested_event(
        &self,
        command: &CommandFrame,
        spec: Option<&VerbSpec>,
        note: Option<(&str, &str)>,
    ) -> AuditEvent {
        let mut details = json!({
            "verb": command.verb,
            "args": Value::Object(redact(&command.args, spec)),
            "timeout_ms": command.timeout_ms,
            "issued_at": command.issued_at,
        });
        if let Some((key, value)) = note {
            details[key] = value.into();
        }
        self.event(kinds::COMMAND_REQUESTED)
            .actor(command.requested_by.as_str())
            .command(command.command_id.as_str())
            .details(details)
    }

    fn event(&self, kind: &str) -> AuditEvent {
        AuditEvent::new(kind).agent(self.inner.agent_id.as_str())
    }

    fn append(&self, event: AuditEvent) {
        if let Err(e) = self.inner.log.append(event) {
            error!(error = %e, "cannot write to the audit log");
        }
    }
}

/// `args` with every value that is not a declared, non-secret param of `spec` replaced by its
/// [`agentmesh_audit::salted_secret`] (each with its own random salt).
pub fn redact(args: &Map<String, Value>, spec: Option<&VerbSpec>) -> Map<String, Value> {
    args.iter()
        .map(|(name, value)| {
            let in_clear = spec
                .and_then(|s| s.params.get(name))
                .is_some_and(|p| !p.secret);
            let recorded = if in_clear {
                value.clone()
            } else {
                // rand's thread RNG is a CSPRNG seeded from the OS.
                let salt: [u8; agentmesh_audit::SECRET_SALT_BYTES] = rand::random();
                Value::String(agentmesh_audit::salted_secret(&salt, &arg_to_argv(value)))
            };
            (name.clone(), recorded)
        })
        .collect()
}

fn log_report(path: &Path, report: &OpenReport) {
    info!(
        path = %path.display(),
        records = report.records,
        last_seq = report.last_seq,
        "audit log opened"
    );
    if let Some(repaired) = &report.repaired {
        warn!(path = %path.display(), repair = %repaired, "audit log had a torn tail (crash); cut and recorded");
    }
    if let Some(broken) = &report.broken {
        error!(
            path = %path.display(),
            error = %broken,
            "audit log does not verify (not a crash: possible tampering); left as evidence, chain continues"
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agentmesh_protocol::{ParamKind, ParamSpec};

    fn spec() -> VerbSpec {
        let param = |secret| ParamSpec {
            kind: ParamKind::String {
                pattern: None,
                max_len: None,
                allow_leading_dash: false,
            },
            required: true,
            secret,
            description: None,
        };
        VerbSpec {
            name: "set_password".into(),
            description: String::new(),
            params: [
                ("user".into(), param(false)),
                ("password".into(), param(true)),
            ]
            .into_iter()
            .collect(),
            timeout_ms: 1000,
        }
    }

    #[test]
    fn secret_and_undeclared_params_are_hashed() {
        let args = json!({"user": "alice", "password": "hunter2", "extra": 5});
        let out = redact(args.as_object().unwrap(), Some(&spec()));
        assert_eq!(out["user"], "alice");
        let password = out["password"].as_str().unwrap();
        assert!(agentmesh_audit::secret_matches(password, "hunter2"));
        assert!(!agentmesh_audit::secret_matches(password, "hunter3"));
        assert!(agentmesh_audit::secret_matches(
            out["extra"].as_str().unwrap(),
            "5"
        ));
        // Each value gets its own salt: the same secret twice is recorded differently.
        let again = redact(args.as_object().unwrap(), Some(&spec()));
        assert_ne!(again["password"], out["password"]);
        let unknown_verb = redact(args.as_object().unwrap(), None);
        assert_ne!(unknown_verb["user"], "alice");
        assert!(!Value::Object(out).to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn events_chain_and_verify_and_repeated_failures_are_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway-audit.log");
        let audit = AgentAudit::open(&path, "edge-01").unwrap();
        let command = CommandFrame {
            command_id: "c-1".into(),
            verb: "set_password".into(),
            args: json!({"user": "alice", "password": "hunter2"})
                .as_object()
                .cloned()
                .unwrap(),
            timeout_ms: None,
            requested_by: "ops".into(),
            issued_at: String::new(),
        };
        audit.requested_durable(&command, &spec()).await.unwrap();
        for _ in 0..3 {
            audit.hub_pin_mismatch("sha256//x", &["sha256//y".into()]);
        }
        audit.refused(4004, "revoked");
        audit.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        let kinds: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(kinds, ["command_requested", "auth_failed", "revoked"]);
        agentmesh_audit::verify_files(&[path]).unwrap();
    }
}
