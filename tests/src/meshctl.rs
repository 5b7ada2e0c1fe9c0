//! The `meshctl` binary as a child process against a test backend, and a fleet whose agents
//! have the verbs its tests need (output on both streams and a chosen exit code).

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::backend::HubOptions;
use crate::fleet::{Fleet, VERBS};
use crate::PATIENCE;

/// Verbs added to [`VERBS`] for the meshctl tests.
pub const MESHCTL_VERBS: &str = r#"
[[verbs]]
name = "exit3"
description = "writes to both streams and exits 3"
program = "/bin/sh"
args = ["-c", "echo to-stdout; echo to-stderr >&2; exit 3"]
timeout_secs = 5
"#;

/// A backend and agents (id, role label) with [`VERBS`] and [`MESHCTL_VERBS`], all connected.
pub async fn meshctl_fleet(ids: &[(&str, &str)]) -> Fleet {
    let verbs = format!("{VERBS}{MESHCTL_VERBS}");
    crate::fleet::fleet_with_verbs(ids, HubOptions::default(), &verbs).await
}

/// What one `meshctl` run did.
#[derive(Debug)]
pub struct Run {
    /// Exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Run {
    /// Stdout as JSON (panics with both streams if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("meshctl stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs `meshctl` with `args`, the URL and token in its environment (`None` leaves them out),
/// `HOME` at `home` (so no real profile file is read) and `extra_env` on top.
pub async fn meshctl(
    url: Option<&str>,
    token: Option<&str>,
    home: &Path,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> Run {
    let mut cmd = tokio::process::Command::new(crate::process::meshctl_binary());
    cmd.args(args)
        .env_remove("AGENTMESH_URL")
        .env_remove("AGENTMESH_TOKEN")
        .env_remove("AGENTMESH_CA")
        .env_remove("AGENTMESH_PROFILE")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("NO_COLOR")
        .env("HOME", home)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(u) = url {
        cmd.env("AGENTMESH_URL", u);
    }
    if let Some(t) = token {
        cmd.env("AGENTMESH_TOKEN", t);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out: Output = tokio::time::timeout(PATIENCE * 3, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("meshctl {args:?} did not finish"))
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fresh empty directory for `HOME` under the fleet's PKI directory (removed with it).
pub fn home(fleet: &Fleet) -> PathBuf {
    tempfile::Builder::new()
        .prefix("home-")
        .tempdir_in(fleet.pki.path())
        .unwrap()
        .keep()
}

/// Whether the backend at `addr` serves `GET /api/v1/events`.
pub async fn serves_events(addr: std::net::SocketAddr, token: &str) -> bool {
    stream_status(addr, "/api/v1/events", token).await == 200
}

/// The status of `GET path`, reading only the status line (for a stream that never ends).
pub async fn stream_status(addr: std::net::SocketAddr, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let mut stream = crate::http::connect(addr, path).await;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stream);
    tokio::time::timeout(PATIENCE, reader.read_line(&mut line))
        .await
        .unwrap_or_else(|_| panic!("no status line from {path}"))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line from {path}: {line:?}"))
}
