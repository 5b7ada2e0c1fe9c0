//! A real `backend-agent` process for the audit e2e tests (`audit_disk.rs`,
//! `audit_anchor.rs`): config written by the harness, one connected agent, commands over HTTP,
//! SIGTERM, and `audit verify`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use agentmesh_e2e::backend::{OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::{agent, eventually, http, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::json;

/// The `backend-agent` binary next to this test binary (built by `cargo test --workspace`).
pub fn backend_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("backend-agent");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p backend-agent` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A backend config (ports chosen by an in-process start) with one enrolled agent.
pub struct Setup {
    pub pki: Pki,
    pub config: PathBuf,
    pub http: SocketAddr,
    pub hub: SocketAddr,
    pub server_pin: String,
    pub edge_dir: PathBuf,
}

impl Setup {
    /// Writes the config; `edit` may change its text (e.g. the `[audit]` path).
    pub async fn new(edit: impl FnOnce(String) -> String) -> Setup {
        let pki = Pki::new();
        let (edge, edge_dir) = pki.agent("edge-01");
        let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
        let config = hub.config_path.clone();
        let (http, hub_addr, server_pin) = (hub.http, hub.hub, hub.server_pin.clone());
        hub.stop().await;
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[limits]\n",
            "[limits]\noperator_commands_per_sec = 0\nagent_commands_per_sec = 0\n",
        );
        std::fs::write(&config, edit(text)).unwrap();
        Setup {
            pki,
            config,
            http,
            hub: hub_addr,
            server_pin,
            edge_dir,
        }
    }

    /// The configured audit log (the default place unless `edit` moved it).
    pub fn default_audit_log(&self) -> PathBuf {
        self.config.parent().unwrap().join("audit.log")
    }

    /// Starts the real backend process and waits until it answers.
    pub async fn start_backend(&self) -> BackendProcess {
        let child = Command::new(backend_binary())
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let process = BackendProcess { child: Some(child) };
        let http = self.http;
        eventually("backend process up", PATIENCE, || async move {
            http::try_get(http, "/health").await.is_some()
        })
        .await;
        process
    }

    /// Starts the agent and waits until the backend lists it as connected.
    pub async fn connect_agent(&self) -> TestAgent {
        let cfg = agent::write_config(
            self.pki.path(),
            "edge-01",
            &self.edge_dir,
            self.hub,
            &[&self.server_pin],
            "",
        );
        let agent = TestAgent::start(cfg);
        let http = self.http;
        eventually("agent connected", PATIENCE, || async move {
            let r = http::get(http, "/api/v1/agents/edge-01", Some(VIEWER_TOKEN)).await;
            r.status == 200 && r.json()["connected"] == true
        })
        .await;
        agent
    }

    /// Runs `echo` on the agent and waits for the answer.
    pub async fn command(&self) -> http::Response {
        let body = json!({"verb": "echo", "args": {"message": "audited"}, "wait": true});
        http::request(
            self.http,
            "POST",
            "/api/v1/agents/edge-01/commands",
            Some(OPERATOR_TOKEN),
            Some(&body.to_string()),
        )
        .await
    }

    /// `backend-agent audit verify --config <config>`.
    pub fn verify_config(&self) -> Output {
        Command::new(backend_binary())
            .args(["audit", "verify", "--config"])
            .arg(&self.config)
            .output()
            .unwrap()
    }
}

/// `backend-agent audit verify FILE...`.
pub fn verify_files(files: &[PathBuf]) -> Output {
    Command::new(backend_binary())
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap()
}

/// Every file of the log at `path`.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    agentmesh_audit::log_files(path).unwrap()
}

/// A running `backend-agent`; killed if the test fails before stopping it.
pub struct BackendProcess {
    child: Option<Child>,
}

impl BackendProcess {
    /// Kills the process with SIGKILL (a crash: no shutdown path, no final checkpoint).
    pub fn kill_9(mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .arg("-9")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit (the graceful shutdown path).
    pub async fn terminate(mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let mut exited = None;
        eventually("backend exits after SIGTERM", PATIENCE, || {
            let done = child.try_wait().unwrap();
            if done.is_some() {
                exited = done;
            }
            async move { done.is_some() }
        })
        .await;
        let exited = exited.unwrap();
        assert!(exited.success(), "backend exited with {exited}");
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Text of a process's stdout and stderr, for assertion messages.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
