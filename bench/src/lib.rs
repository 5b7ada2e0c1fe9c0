//! Shared pieces of `drain-restart` and `ops-bench`: ports, process guards, configs,
//! quantiles. The `bench` binary (src/main.rs) has its own modules.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use agentmesh_e2e::{http, Pki};
use anyhow::{bail, Result};

/// Admin token every benchmark config enables.
pub const TOKEN: &str = "amt_bench_token";

/// A free loopback port (bound and released; fine for a benchmark, never for tests).
pub fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Kills and reaps a child process when dropped.
pub struct ChildGuard(pub Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a backend config enrolling `agents` (id, pin) and the bench admin token.
pub fn write_backend_config(
    dir: &Path,
    pki: &Pki,
    http: SocketAddr,
    hub: SocketAddr,
    agents: &[(String, String)],
) -> Result<PathBuf> {
    let root = pki.path().display();
    let mut t = format!(
        "[http]\nlisten = \"{http}\"\n[hub]\nlisten = \"{hub}\"\ncert = \"{root}/server/cert.pem\"\nkey = \"{root}/server/key.pem\"\nclient_ca = \"{root}/ca/ca.pem\"\n[store]\npath = \"{d}/backend.db\"\n[audit]\npath = \"{d}/audit.log\"\n[limits]\noperator_commands_per_sec = 0\nagent_commands_per_sec = 0\nhub_connects_per_ip_per_sec = 0\nhub_handshakes_per_sec = 0\n[[tokens]]\nname = \"bench\"\nsha256 = \"{h}\"\nrole = \"admin\"\n",
        d = dir.display(),
        h = backend_agent::auth::token_sha256_hex(TOKEN),
    );
    for (id, pin) in agents {
        t.push_str(&format!("[[agents]]\nid = \"{id}\"\npins = [\"{pin}\"]\n"));
    }
    let path = dir.join("backend.toml");
    std::fs::write(&path, t)?;
    Ok(path)
}

/// Waits until the API answers `/health`.
pub async fn wait_health(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http::try_get(addr, "/health").await.is_none() {
        if Instant::now() > deadline {
            bail!("backend did not answer /health");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The `q` quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
