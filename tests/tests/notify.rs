//! Issue 8, "systemd for real": both daemons, run as real processes with `$NOTIFY_SOCKET`
//! and `$WATCHDOG_USEC` as systemd sets them, send `READY=1`, keep-alives (`WATCHDOG=1`),
//! a `STATUS=` line saying what they are doing, and `STOPPING=1` on SIGTERM. The agent's
//! status follows its connection: connected to the hub, then reconnecting once it is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "audit_proc/mod.rs"]
mod audit_proc;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

use agentmesh_e2e::{agent, init_logging, Pki, TestHub, PATIENCE};
use audit_proc::{backend_binary, Setup};
use tokio::net::UnixDatagram;

/// The notification socket a service manager would listen on, and what arrived on it.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Manager {
    fn bind(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        Manager {
            socket: UnixDatagram::bind(&path).unwrap(),
            path,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until `want` holds for what arrived so far; panics after [`PATIENCE`].
    async fn wait_until(&mut self, what: &str, want: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = vec![0u8; 4096];
        while !want(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} from the daemon; got {:?}",
                self.seen
            );
            if let Ok(Ok(n)) = tokio::time::timeout(left, self.socket.recv(&mut buf)).await {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.extend(msg.lines().map(str::to_owned));
            }
        }
    }

    /// How many lines equal `line`.
    fn count(seen: &[String], line: &str) -> usize {
        seen.iter().filter(|l| *l == line).count()
    }

    /// The latest `STATUS=` line.
    fn status(&self) -> String {
        self.seen
            .iter()
            .rev()
            .find(|l| l.starts_with("STATUS="))
            .cloned()
            .unwrap_or_default()
    }

    fn env(&self, cmd: &mut Command) {
        // 400 ms: keep-alives every 200 ms; the test only counts that they arrive.
        cmd.env("NOTIFY_SOCKET", &self.path)
            .env("WATCHDOG_USEC", "400000");
    }
}

fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn gateway_binary() -> PathBuf {
    let bin = backend_binary().with_file_name("gateway-agent");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p gateway-agent`",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn backend_notifies_ready_watchdog_status_and_stopping() {
    init_logging();
    let setup = Setup::new(|t| t).await;
    let mut manager = Manager::bind(setup.pki.path());
    let mut cmd = Command::new(backend_binary());
    cmd.arg("--config")
        .arg(&setup.config)
        .env("RUST_LOG", "warn");
    manager.env(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    manager
        .wait_until("READY=1", |s| Manager::count(s, "READY=1") == 1)
        .await;
    manager
        .wait_until("STATUS=", |s| s.iter().any(|l| l.starts_with("STATUS=")))
        .await;
    assert!(
        manager.status().contains("0 agent(s) connected"),
        "{}",
        manager.status()
    );
    manager
        .wait_until("two keep-alives", |s| Manager::count(s, "WATCHDOG=1") >= 2)
        .await;
    terminate(&mut child);
    manager
        .wait_until("STOPPING=1", |s| Manager::count(s, "STOPPING=1") == 1)
        .await;
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn agent_status_follows_its_connection() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let mut hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        hub.hub,
        &[&hub.server_pin],
        "",
    );
    let mut manager = Manager::bind(pki.path());
    let mut cmd = Command::new(gateway_binary());
    cmd.arg("--config").arg(&cfg).env("RUST_LOG", "warn");
    manager.env(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    manager
        .wait_until("READY=1", |s| Manager::count(s, "READY=1") == 1)
        .await;
    let connected = format!(
        "STATUS=connected to wss://127.0.0.1:{}/ws/agent (session ",
        hub.hub.port()
    );
    manager
        .wait_until("STATUS=connected", |s| {
            s.iter().any(|l| l.starts_with(&connected))
        })
        .await;
    manager
        .wait_until("keep-alives", |s| Manager::count(s, "WATCHDOG=1") >= 2)
        .await;
    // The hub goes away: the status says so, and when the next attempt is due.
    hub.kill();
    manager
        .wait_until("STATUS=disconnected", |s| {
            s.iter()
                .any(|l| l.starts_with("STATUS=disconnected from") && l.contains("reconnecting in"))
        })
        .await;
    terminate(&mut child);
    manager
        .wait_until("STOPPING=1", |s| Manager::count(s, "STOPPING=1") == 1)
        .await;
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
