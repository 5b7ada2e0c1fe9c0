//! Helpers of `reload.rs`: real `backend-agent` / `gateway-agent` children, SIGHUP, and what
//! the API and the audit log say about them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use agentmesh_e2e::backend::VIEWER_TOKEN;
use agentmesh_e2e::{eventually, http, raw, PATIENCE};
use serde_json::Value;

use crate::audit_proc::{backend_binary, Setup};

/// Sends SIGHUP to `pid`.
pub fn hup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A real backend process, killed when dropped.
pub struct Backend {
    /// The process.
    pub child: Child,
}

impl Backend {
    /// Starts it (logging to `<config>.log`) and waits until it answers.
    pub async fn start(setup: &Setup) -> Backend {
        let log = std::fs::File::create(setup.config.with_extension("log")).unwrap();
        let child = Command::new(backend_binary())
            .arg("--config")
            .arg(&setup.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let http = setup.http;
        eventually("backend process up", PATIENCE, || async move {
            http::try_get(http, "/health").await.is_some()
        })
        .await;
        Backend { child }
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /api/v1/agents/edge-01`.
pub async fn agent_view(setup: &Setup) -> Value {
    let r = http::get(setup.http, "/api/v1/agents/edge-01", Some(VIEWER_TOKEN)).await;
    assert_eq!(r.status, 200);
    r.json()
}

/// Waits until the audit log holds `count` records of `kind`.
pub async fn audited(setup: &Setup, kind: &str, count: usize) {
    let path = setup.default_audit_log();
    let needle = format!("\"kind\":\"{kind}\"");
    eventually(&format!("{count} × {kind} audited"), PATIENCE, || {
        let path = path.clone();
        let needle = needle.clone();
        async move {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            text.matches(&needle).count() >= count
        }
    })
    .await;
}

/// Appends `text` to the config file.
pub fn append(config: &Path, text: &str) {
    let mut body = std::fs::read_to_string(config).unwrap();
    body.push_str(text);
    std::fs::write(config, body).unwrap();
}

/// The hub's certificate as a new TLS client sees it.
pub async fn served_pin(setup: &Setup) -> String {
    let (probe, _) = setup.pki.agent("probe");
    let tls = raw::tls(setup.hub, setup.pki.ca.cert_pem(), Some(&probe))
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    mesh_certs::pin_from_cert_der(leaf.as_ref()).unwrap()
}

/// The `gateway-agent` binary next to `backend-agent`.
pub fn gateway_binary() -> PathBuf {
    let bin = backend_binary().with_file_name("gateway-agent");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p gateway-agent`",
        bin.display()
    );
    bin
}

/// A verb the agent's config gains on reload.
pub const UPTIME_VERB: &str = r#"
[[verbs]]
name = "uptime"
description = "added by a reload"
program = "/bin/echo"
args = ["up"]
timeout_secs = 5
"#;

/// The verb names of an agent view.
pub fn verbs_of(view: &Value) -> Vec<String> {
    view["verbs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}
