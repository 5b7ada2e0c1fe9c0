//! Running one program: its own process group, a cleared environment, stdin from /dev/null,
//! captured output, and a timeout or cancel that takes the whole group down.
//!
//! ```text
//! spawn (process_group(0)) ──► leader exits ──────────────┐
//!        │                                                 │
//!        ├─ timeout / cancel ─► SIGTERM group ─► ≤ 2 s ────┤
//!        │                                                 ▼
//!        │                     SIGKILL group (leader not reaped yet) ─► reap leader
//!        └─ stdout/stderr read concurrently; 2 s after the leader is gone they stop
//! ```
//!
//! The leader's exit is observed with `waitid(WEXITED | WNOWAIT)` on a small dedicated thread,
//! which leaves the leader a zombie. While it is unreaped its pid cannot be reused, so the final
//! `killpg(SIGKILL)` can only reach this command's own group. Only then is the leader reaped.
//! Processes that leave the group themselves (`setsid`, `setpgid`) escape it: run the agent
//! under systemd (`KillMode=control-group`) to contain those.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use tokio::sync::watch;
use tracing::warn;

use super::capture::{capture, Captured};

/// Time between SIGTERM and SIGKILL on timeout or cancel.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long output is still read after the leader is gone (a process that escaped the group
/// may hold the pipes open forever).
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Why a running command is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The hub sent `cancel`.
    Hub,
    /// The agent is shutting down and the command outlived the grace period.
    Shutdown,
}

/// Everything needed to start one program.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Absolute path; executed directly, never through a shell.
    pub program: PathBuf,
    /// argv after the program, one element each.
    pub args: Vec<String>,
    /// The complete environment (everything else is cleared).
    pub env: Vec<(String, OsString)>,
    /// Working directory, if not the agent's.
    pub working_dir: Option<PathBuf>,
    /// `(uid, gid)` to switch to; supplementary groups are dropped when set.
    pub user: Option<(u32, u32)>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Cap on each of stdout and stderr.
    pub max_output_bytes: usize,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The program exited on its own.
    Exited,
    /// The timeout expired and the group was killed.
    TimedOut,
    /// A cancel arrived and the group was killed.
    Cancelled(CancelReason),
}

/// The result of a run that started.
#[derive(Debug)]
pub struct Outcome {
    /// Why it ended.
    pub ending: Ending,
    /// The leader's status (`None` if it could not be collected).
    pub status: Option<ExitStatus>,
    /// Captured stdout.
    pub stdout: Captured,
    /// Captured stderr.
    pub stderr: Captured,
}

impl Outcome {
    /// The exit code, when the leader exited rather than being killed by a signal.
    pub fn exit_code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The signal that killed the leader, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.and_then(|s| s.signal())
    }
}

/// Starts `inv` and supervises it to the end. `Err` means it never started.
pub async fn run(
    inv: &Invocation,
    mut cancel: watch::Receiver<Option<CancelReason>>,
) -> std::io::Result<Outcome> {
    let mut command = tokio::process::Command::new(&inv.program);
    command
        .args(&inv.args)
        .env_clear()
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &inv.working_dir {
        command.current_dir(dir);
    }
    if let Some((uid, gid)) = inv.user {
        command.uid(uid).gid(gid);
    }
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("the child has no pid"))?;
    // From here until the leader is reaped, dropping this future kills the whole group.
    let mut group = GroupGuard(Some(pid));
    let mut exited = match watch_exit(pid) {
        Ok(rx) => rx,
        Err(e) => {
            // Without the watcher the exit cannot be observed safely; do not leave it running.
            drop(group);
            let _ = child.wait().await;
            return Err(std::io::Error::other(format!(
                "cannot start the exit watcher thread: {e}"
            )));
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (done_tx, done_rx) = watch::channel(false);
    let grace = |mut done: watch::Receiver<bool>| async move {
        let _ = done.wait_for(|d| *d).await;
        tokio::time::sleep(OUTPUT_GRACE).await;
    };
    let cap = inv.max_output_bytes;
    let supervise = async {
        let ending = supervise(pid, &mut exited, inv.timeout, &mut cancel).await;
        let status = match child.wait().await {
            Ok(status) => Some(status),
            Err(e) => {
                warn!(error = %e, "cannot collect the exit status");
                None
            }
        };
        // Reaped: the pid may be reused from now on, so never signal the group again.
        group.0 = None;
        let _ = done_tx.send(true);
        (ending, status)
    };
    let ((ending, status), stdout, stderr) = tokio::join!(
        supervise,
        capture(stdout, cap, grace(done_rx.clone())),
        capture(stderr, cap, grace(done_rx)),
    );
    Ok(Outcome {
        ending,
        status,
        stdout,
        stderr,
    })
}

/// Waits for the leader's exit, the timeout or a cancel; on the latter two, SIGTERM then (after
/// [`KILL_GRACE`]) SIGKILL. Always ends with SIGKILL to whatever is left of the group, while the
/// leader is still unreaped.
async fn supervise(
    pgid: Pid,
    exited: &mut watch::Receiver<bool>,
    timeout: Duration,
    cancel: &mut watch::Receiver<Option<CancelReason>>,
) -> Ending {
    let cancelled = async {
        let reason = cancel
            .wait_for(Option::is_some)
            .await
            .ok()
            .map(|r| (*r).unwrap_or(CancelReason::Hub));
        match reason {
            Some(reason) => reason,
            // The canceller is gone: nothing can cancel any more.
            None => std::future::pending().await,
        }
    };
    let ending = tokio::select! {
        _ = exited.wait_for(|e| *e) => Ending::Exited,
        _ = tokio::time::sleep(timeout) => Ending::TimedOut,
        reason = cancelled => Ending::Cancelled(reason),
    };
    if ending != Ending::Exited {
        signal_group(pgid, Signal::SIGTERM);
        let _ = tokio::time::timeout(KILL_GRACE, exited.wait_for(|e| *e)).await;
    }
    signal_group(pgid, Signal::SIGKILL);
    // SIGKILL cannot be ignored: the leader is gone (or going) now.
    let _ = exited.wait_for(|e| *e).await;
    ending
}

fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            warn!(pgid = pgid.as_raw(), %signal, error = %e, "cannot signal the process group")
        }
    }
}

/// A thread that waits (without reaping) for the leader to exit; the receiver turns `true` then.
fn watch_exit(pid: Pid) -> std::io::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    std::thread::Builder::new()
        .name("agentmesh-exit-watch".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            // Retried on EINTR; anything else means exited (still a zombie) or ECHILD (reaped
            // elsewhere): gone either way.
            while let Err(Errno::EINTR) =
                waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
            {}
            let _ = tx.send(true);
        })?;
    Ok(rx)
}

/// Kills the group if the run is abandoned (task aborted) before the leader was reaped.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}
