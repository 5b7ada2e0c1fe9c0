//! Turning what happened into a `result` frame, and the error codes the agent uses.
//!
//! | status | `error.code` | when |
//! |---|---|---|
//! | `ok` | — | exit status 0 (built-ins always) |
//! | `failed` | `nonzero_exit` | exited with another status (`exit_code` set) |
//! | `failed` | `signal` | killed by a signal it did not get from us (`exit_code` null) |
//! | `failed` | `spawn_failed` | the program could not be started |
//! | `failed` | `run_as_failed` | the `run_as` user is unknown or the agent cannot switch to it |
//! | `failed` | `interrupted` | the agent stopped while it ran; it is never re-run |
//! | `failed` | `store_failed` | the start could not be recorded durably, so it was not run |
//! | `failed` | `audit_failed` | the request could not be audited durably, so it was not run |
//! | `rejected` | `unknown_verb`, `invalid_args`, `rate_limited`, `shutting_down`, `invalid_command_id` | refused before running |
//! | `timeout` | `timeout` | killed at its timeout |
//! | `cancelled` | `cancelled` / `agent_shutdown` | killed by `cancel` / by the agent's shutdown |

use std::time::Duration;

use agentmesh_protocol::{AgentFrame, CommandStatus, ErrorBody, ResultFrame};
use nix::sys::signal::Signal;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::process::{CancelReason, Ending, Outcome};

/// The current time, RFC 3339 (UTC, with fractional seconds).
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// `t` as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A result with no output.
pub fn bare(command_id: &str, status: CommandStatus, error: Option<ErrorBody>) -> ResultFrame {
    ResultFrame {
        command_id: command_id.to_owned(),
        status,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        started_at: None,
        duration_ms: None,
        error,
        // Result signing is not part of this agent yet.
        signature: None,
    }
}

/// Refused before running.
pub fn rejected(command_id: &str, code: &str, message: impl Into<String>) -> ResultFrame {
    bare(
        command_id,
        CommandStatus::Rejected,
        Some(ErrorBody::new(code, message)),
    )
}

/// Failed without output.
pub fn failed(command_id: &str, code: &str, message: impl Into<String>) -> ResultFrame {
    bare(
        command_id,
        CommandStatus::Failed,
        Some(ErrorBody::new(code, message)),
    )
}

/// A built-in's answer.
pub fn ok_stdout(command_id: &str, stdout: String) -> ResultFrame {
    ResultFrame {
        exit_code: Some(0),
        stdout,
        ..bare(command_id, CommandStatus::Ok, None)
    }
}

/// The result of a process run that started.
pub fn from_process(command_id: &str, outcome: &Outcome, timeout: Duration) -> ResultFrame {
    let exit_code = outcome.exit_code();
    let (status, error) = match outcome.ending {
        Ending::TimedOut => (
            CommandStatus::Timeout,
            Some(ErrorBody::new(
                "timeout",
                format!(
                    "did not finish within {} ms; its process group was killed",
                    timeout.as_millis()
                ),
            )),
        ),
        Ending::Cancelled(CancelReason::Hub) => (
            CommandStatus::Cancelled,
            Some(ErrorBody::new(
                "cancelled",
                "cancelled by the hub; its process group was killed",
            )),
        ),
        Ending::Cancelled(CancelReason::Shutdown) => (
            CommandStatus::Cancelled,
            Some(ErrorBody::new(
                "agent_shutdown",
                "the agent shut down and the command outlived the shutdown grace period",
            )),
        ),
        Ending::Exited => match (exit_code, outcome.signal()) {
            (Some(0), _) => (CommandStatus::Ok, None),
            (Some(code), _) => (
                CommandStatus::Failed,
                Some(ErrorBody::new(
                    "nonzero_exit",
                    format!("exited with status {code}"),
                )),
            ),
            (None, Some(signal)) => (
                CommandStatus::Failed,
                Some(ErrorBody::new(
                    "signal",
                    format!("killed by signal {}", signal_name(signal)),
                )),
            ),
            (None, None) => (
                CommandStatus::Failed,
                Some(ErrorBody::new(
                    "wait_failed",
                    "the exit status could not be collected",
                )),
            ),
        },
    };
    ResultFrame {
        exit_code,
        stdout: outcome.stdout.text(),
        stderr: outcome.stderr.text(),
        truncated: outcome.stdout.truncated || outcome.stderr.truncated,
        ..bare(command_id, status, error)
    }
}

/// Room left in a frame for the `signature` field (base64 of a DER ECDSA P-256 signature of
/// at most 72 bytes is 96 characters, plus the key and quotes).
pub const SIGNATURE_ROOM: usize = 128;

/// Shrinks stdout/stderr (setting `truncated`) until the `result` frame, once signed, fits in
/// `max_bytes`, so an oversized result can never get the session closed with 1009 again and
/// again. Returns whether it cut anything (a signature made before no longer matches then).
pub fn fit_result(result: &mut ResultFrame, max_bytes: usize) -> bool {
    let budget = max_bytes.saturating_sub(SIGNATURE_ROOM);
    let size = |r: &ResultFrame| {
        let unsigned = ResultFrame {
            signature: None,
            ..r.clone()
        };
        AgentFrame::Result(unsigned).to_json().len()
    };
    let mut len = size(result);
    let mut cut = false;
    while len > budget && !(result.stdout.is_empty() && result.stderr.is_empty()) {
        let longer = if result.stdout.len() >= result.stderr.len() {
            &mut result.stdout
        } else {
            &mut result.stderr
        };
        let mut at = longer.len() / 2;
        while !longer.is_char_boundary(at) {
            at -= 1;
        }
        longer.truncate(at);
        result.truncated = true;
        cut = true;
        len = size(result);
    }
    cut
}

fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(s) => format!("{signal} ({})", s.as_str()),
        Err(_) => signal.to_string(),
    }
}

/// An immediate answer.
pub(crate) fn reply(result: super::Outgoing) -> super::Submitted {
    super::Submitted::Reply(Box::new(result))
}

/// A result not signed for any key or limit yet (signed when it is sent).
pub(crate) fn unsealed(frame: ResultFrame) -> super::Outgoing {
    super::Outgoing {
        frame,
        sealed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::capture::Captured;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::ExitStatus;

    fn outcome(ending: Ending, raw_status: i32) -> Outcome {
        let mut stdout = Captured::new(3);
        stdout.push(b"hello");
        Outcome {
            ending,
            status: Some(ExitStatus::from_raw(raw_status)),
            stdout,
            stderr: Captured::new(3),
        }
    }

    #[test]
    fn statuses_and_codes() {
        let t = Duration::from_millis(1500);
        let r = from_process("c", &outcome(Ending::Exited, 0), t);
        assert_eq!((r.status, r.exit_code), (CommandStatus::Ok, Some(0)));
        assert_eq!(r.stdout, "hel");
        assert!(r.truncated);
        let r = from_process("c", &outcome(Ending::Exited, 3 << 8), t);
        assert_eq!((r.status, r.exit_code), (CommandStatus::Failed, Some(3)));
        assert_eq!(r.error.unwrap().code, "nonzero_exit");
        let r = from_process("c", &outcome(Ending::Exited, 9), t);
        assert_eq!((r.status, r.exit_code), (CommandStatus::Failed, None));
        let e = r.error.unwrap();
        assert_eq!(e.code, "signal");
        assert!(e.message.contains("SIGKILL"), "{e:?}");
        let r = from_process("c", &outcome(Ending::TimedOut, 15), t);
        assert_eq!(r.status, CommandStatus::Timeout);
        let e = r.error.unwrap();
        assert_eq!(e.code, "timeout");
        assert!(e.message.contains("1500 ms"), "{e:?}");
        let r = from_process("c", &outcome(Ending::Cancelled(CancelReason::Hub), 15), t);
        assert_eq!(r.status, CommandStatus::Cancelled);
    }

    #[test]
    fn an_oversized_result_is_cut_to_fit_with_room_for_the_signature() {
        let mut r = ok_stdout("c", "é".repeat(50_000));
        r.stderr = "\u{1}".repeat(10_000); // JSON-escaped to 6 bytes each
        assert!(fit_result(&mut r, 16 * 1024));
        r.signature = Some("A".repeat(96));
        assert!(AgentFrame::Result(r.clone()).to_json().len() <= 16 * 1024);
        assert!(r.truncated);
        assert!(!r.stdout.is_empty());
        let mut small = ok_stdout("c", "hi".into());
        assert!(!fit_result(&mut small, 16 * 1024));
        assert_eq!(small.stdout, "hi");
        assert!(!small.truncated);
    }
}
