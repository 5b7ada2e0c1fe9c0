//! Child processes: the backend, the raw server and swarms (killed and reaped on drop), and
//! the line protocol the benchmark speaks with its own re-executed children.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A child with line-based stdin/stdout; SIGKILLed when dropped (tokio `kill_on_drop`).
pub struct LineChild {
    /// The process.
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl LineChild {
    /// Starts this benchmark binary again with `args` (a hidden subcommand).
    pub fn spawn_self(args: &[&str]) -> Result<LineChild> {
        let exe = std::env::current_exe().context("current_exe")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("re-executing the benchmark")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        Ok(LineChild {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Its process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sends one line.
    pub async fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// The next line, within `limit`.
    pub async fn recv(&mut self, limit: Duration) -> Result<String> {
        match tokio::time::timeout(limit, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!("child exited"),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("child said nothing in {limit:?}"),
        }
    }

    /// Closes stdin (the child's shutdown signal) and waits up to `limit` for the exit.
    pub async fn close(mut self, limit: Duration) {
        self.stdin.take();
        if tokio::time::timeout(limit, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A release binary of the workspace next to this one (`backend-agent`, `gateway-agent`).
pub fn sibling(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("binary directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it next to the benchmark (cargo build --release -p agentmesh-bench -p backend-agent -p gateway-agent)",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `binary --config config`, logging to `log` (RUST_LOG from `BENCH_LOG`, else warn).
pub fn spawn_daemon(binary: &Path, config: &Path, log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log)?;
    let level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".to_owned());
    Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", level)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// This process's stdin, a line at a time, read on a plain thread (tokio's `io-std` is not
/// enabled in the workspace); `None` after EOF. At most 16 lines wait unread (the thread
/// blocks beyond).
pub fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}
