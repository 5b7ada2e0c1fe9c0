//! Shared pieces of the benchmark binaries: ports, process guards, RSS, configs.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentmesh_e2e::{agent, http, Pki};
use anyhow::{bail, Context, Result};

/// Admin token every benchmark config enables.
pub const TOKEN: &str = "amt_bench_token";

/// A free loopback port (bound and released; fine for a benchmark, never for tests).
pub fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
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

/// Lifts the agent's own limits in a `gateway.toml` written by the e2e harness (a benchmark
/// measures the pipeline, not the agent's `commands_per_minute` quota).
pub fn raise_agent_limits(gateway_toml: &Path) -> Result<()> {
    let extra = "[limits]\nmax_concurrency = 64\ncommands_per_minute = 1000000\n\n[[verbs]]";
    let text = std::fs::read_to_string(gateway_toml)?.replacen("[[verbs]]", extra, 1);
    std::fs::write(gateway_toml, text)?;
    Ok(())
}

/// A `backend-agent` process and one connected `gateway-agent` process on loopback.
pub struct Pair {
    /// Certificates and configs (kept alive for the processes).
    pub pki: Pki,
    /// The operator API.
    pub http: SocketAddr,
    /// Backend process id.
    pub backend_pid: u32,
    /// Gateway agent process id.
    pub gateway_pid: u32,
    /// From spawning the agent process to the API listing it connected.
    pub start_to_listed: Duration,
    _backend: ChildGuard,
    _gateway: ChildGuard,
}

/// Starts the pair from `bin_dir` (release binaries) with agent `agent_id`; `audit_fsync`
/// sets the backend's `[audit] fsync`. Rate limits on both sides are lifted.
pub async fn start_pair(bin_dir: &Path, agent_id: &str, audit_fsync: bool) -> Result<Pair> {
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent(agent_id);
    let (http_addr, hub_addr) = (free_port()?, free_port()?);
    let config = write_backend_config(
        pki.path(),
        &pki,
        http_addr,
        hub_addr,
        &[(agent_id.into(), edge.pin.clone())],
    )?;
    let text = std::fs::read_to_string(&config)?
        .replace("[audit]\n", &format!("[audit]\nfsync = {audit_fsync}\n"));
    std::fs::write(&config, text)?;
    let backend = spawn(&bin_dir.join("backend-agent"), &config)?;
    let backend_pid = backend.0.id();
    wait_health(http_addr).await?;
    let gw_config = agent::write_config(
        pki.path(),
        agent_id,
        &edge_dir,
        hub_addr,
        &[&pki.server.pin],
        "",
    );
    raise_agent_limits(&gw_config)?;
    let started = Instant::now();
    let gateway = spawn(&bin_dir.join("gateway-agent"), &gw_config)?;
    let gateway_pid = gateway.0.id();
    let path = format!("/api/v1/agents/{agent_id}");
    loop {
        let r = http::get(http_addr, &path, Some(TOKEN)).await;
        if r.status == 200 && r.json()["connected"] == true {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("agent never listed");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Pair {
        start_to_listed: started.elapsed(),
        pki,
        http: http_addr,
        backend_pid,
        gateway_pid,
        _backend: backend,
        _gateway: gateway,
    })
}

fn spawn(binary: &Path, config: &Path) -> Result<ChildGuard> {
    let child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build with cargo build --release first)",
                binary.display()
            )
        })?;
    Ok(ChildGuard(child))
}
