//! `bench swarm LIST`: agents in library mode — the gateway agent's own dialer, session,
//! executor (at-most-once store, audit log) per agent — one per config path in LIST, in this
//! process. Driven over stdin, one command a line, one answer a line:
//!
//! | command | answer |
//! |---|---|
//! | `go` | `started` once every agent runs (they connect on their own) |
//! | `count` | `connected K` |
//! | `mark` | `marked`: from now on, each agent's next new session is timed |
//! | `reconnected SECS` | `{"times": [unix ms…], "missing": M}` within SECS |
//! | `stop` or EOF | `stopped`, then exit (agents shut down as on SIGTERM) |
//!
//! [`Swarms`] is the parent side: agents split over processes by the fd limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gateway_agent::{AgentState, GatewayConfig};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::procs::LineChild;
use crate::sys::unix_ms;

/// File descriptors one library-mode agent holds (socket, audit log, store, spare).
pub const FDS_PER_AGENT: u64 = 4;
/// Descriptors a process keeps for everything else.
pub const FD_RESERVE: u64 = 512;

/// Runs the subcommand until `stop` or EOF on stdin.
pub async fn main(list: &Path) -> Result<()> {
    let text = std::fs::read_to_string(list)?;
    let mut configs = Vec::new();
    for path in text.lines().filter(|l| !l.is_empty()) {
        let config = GatewayConfig::load_with_env(Path::new(path), std::iter::empty())
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        configs.push(config);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents: Vec<(Arc<AgentState>, JoinHandle<()>)> = Vec::new();
    let mut waiters: Vec<JoinHandle<f64>> = Vec::new();
    let mut lines = crate::procs::stdin_lines();
    println!("loaded {}", configs.len());
    while let Some(line) = lines.recv().await {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("go") => {
                for config in configs.drain(..) {
                    let state = AgentState::new();
                    let mut stop = stop_rx.clone();
                    let run_state = state.clone();
                    let task = tokio::spawn(async move {
                        let shutdown = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        let id = config.agent.id.clone();
                        if let Err(e) =
                            gateway_agent::run_with_state(config, run_state, shutdown).await
                        {
                            eprintln!("swarm agent {id}: {e}");
                        }
                    });
                    agents.push((state, task));
                }
                println!("started");
            }
            Some("count") => {
                let n = agents.iter().filter(|(s, _)| s.is_connected()).count();
                println!("connected {n}");
            }
            Some("mark") => {
                waiters = agents
                    .iter()
                    .map(|(state, _)| {
                        let state = state.clone();
                        let base = state.snapshot().connects;
                        tokio::spawn(async move {
                            state.wait_for(|s| s.connected && s.connects > base).await;
                            unix_ms()
                        })
                    })
                    .collect();
                println!("marked");
            }
            Some("reconnected") => {
                let secs: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(60.0);
                let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
                let (mut times, mut missing) = (Vec::new(), 0);
                for w in waiters.drain(..) {
                    match tokio::time::timeout_at(deadline, w).await {
                        Ok(Ok(t)) => times.push(t),
                        _ => missing += 1,
                    }
                }
                println!("{}", json!({"times": times, "missing": missing}));
            }
            Some("stop") => break,
            _ => println!("error unknown command {line:?}"),
        }
    }
    let _ = stop_tx.send(true);
    for (_, task) in agents {
        if tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .is_err()
        {
            eprintln!("swarm: an agent did not stop within 15 s");
        }
    }
    println!("stopped");
    Ok(())
}

/// The parent side: one or more swarm processes.
pub struct Swarms {
    procs: Vec<LineChild>,
}

/// Agents one swarm process may run under the fd limit `limit`.
pub fn per_process(limit: u64) -> usize {
    (limit.saturating_sub(FD_RESERVE) / FDS_PER_AGENT).max(1) as usize
}

impl Swarms {
    /// Starts processes for `configs` (at most [`per_process`] each), loaded, not yet running;
    /// their lists are `dir/NAME-K.list`.
    pub async fn spawn(
        dir: &Path,
        name: &str,
        configs: &[PathBuf],
        fd_limit: u64,
    ) -> Result<Swarms> {
        let mut procs = Vec::new();
        for (n, chunk) in configs.chunks(per_process(fd_limit)).enumerate() {
            let list = dir.join(format!("{name}-{n}.list"));
            let text: Vec<String> = chunk.iter().map(|p| p.display().to_string()).collect();
            std::fs::write(&list, text.join("\n"))?;
            let mut child = LineChild::spawn_self(&["swarm", &list.display().to_string()])?;
            let ready = child.recv(Duration::from_secs(300)).await?;
            if !ready.starts_with("loaded") {
                bail!("swarm: {ready}");
            }
            procs.push(child);
        }
        Ok(Swarms { procs })
    }

    /// Sends `command` to every process; their answers in order.
    pub async fn ask(&mut self, command: &str, limit: Duration) -> Result<Vec<String>> {
        for p in &mut self.procs {
            p.send(command).await?;
        }
        let mut answers = Vec::new();
        for p in &mut self.procs {
            answers.push(
                p.recv(limit)
                    .await
                    .with_context(|| format!("swarm: {command}"))?,
            );
        }
        Ok(answers)
    }

    /// Starts every agent.
    pub async fn go(&mut self) -> Result<()> {
        self.ask("go", Duration::from_secs(300)).await.map(drop)
    }

    /// Reconnection times (unix ms) since `mark`, and how many did not reconnect in `limit`.
    pub async fn reconnected(&mut self, limit: Duration) -> Result<(Vec<f64>, u64)> {
        let command = format!("reconnected {}", limit.as_secs_f64());
        let (mut times, mut missing) = (Vec::new(), 0);
        for answer in self.ask(&command, limit + Duration::from_secs(10)).await? {
            let v: Value = serde_json::from_str(&answer).context("swarm reconnected answer")?;
            times.extend(
                v["times"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64),
            );
            missing += v["missing"].as_u64().unwrap_or(0);
        }
        Ok((times, missing))
    }

    /// Ends every process with SIGKILL and reaps it: the run is over and its state dirs are
    /// deleted next, so the agents' graceful shutdown (close frames, audit flushes, N × fsync)
    /// would only add minutes. `stop` on stdin remains the clean way for other callers.
    pub async fn kill(self) {
        for mut p in self.procs {
            let _ = p.child.kill().await;
        }
    }
}
