//! The system under test: a PKI from `mesh-certs`, a real `backend-agent` child process (temp
//! state dir, durable audit) and the agents' configs (each its own certificate and source
//! address); [`Swarms`] runs them.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentmesh_e2e::Pki;
use anyhow::{bail, Context, Result};
use mesh_certs::{Issued, Validity};
use tokio::process::Child;

use crate::client::Client;
use crate::procs::{sibling, spawn_daemon};

/// Admin token of the benchmark's backend.
pub const TOKEN: &str = "amt_bench_token";
/// The agent the latency and throughput phases command (in its own swarm process).
pub const PROBE: &str = "bench-probe";
/// The real `gateway-agent` process of the idle phase.
pub const GATEWAY: &str = "bench-gw";

/// Id of swarm agent `i`.
pub fn swarm_id(i: usize) -> String {
    format!("bench-{i:05}")
}

/// Source address of swarm agent `i`: 127.0.0.2 to 127.0.0.254 in turn.
pub fn source_addr(i: usize) -> String {
    format!("127.0.0.{}", 2 + i % 253)
}

/// A backend process and what the agents need to reach it.
pub struct Mesh {
    /// CA, server certificate and everything written (removed on drop).
    pub pki: Pki,
    /// Operator API.
    pub http: SocketAddr,
    /// Agent hub.
    pub hub: SocketAddr,
    /// The backend config file.
    pub config: PathBuf,
    /// The backend process (None between a kill and a restart).
    pub backend: Option<Child>,
    binary: PathBuf,
    starts: u32,
}

fn free_port() -> Result<SocketAddr> {
    // Bound and released: a tiny race another process could win, fine for a benchmark.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Issues an agent certificate valid long enough that no renewal starts during a run.
pub fn issue(pki: &Pki, id: &str) -> Result<(Issued, PathBuf)> {
    let issued = pki.ca.issue_agent(id, Validity::days(90))?;
    let dir = pki.path().join("agents").join(id);
    issued.save(&dir)?;
    Ok((issued, dir))
}

impl Mesh {
    /// Writes the backend config enrolling `agents` (id, pin) and starts the backend.
    pub async fn start(mut pki: Pki, agents: &[(String, String)]) -> Result<Mesh> {
        let binary = sibling("backend-agent")?;
        let (http, hub) = (free_port()?, free_port()?);
        let root = pki.path().display().to_string();
        let mut t = format!(
            "[http]\nlisten = \"{http}\"\n[hub]\nlisten = \"{hub}\"\ncert = \"{root}/server/cert.pem\"\nkey = \"{root}/server/key.pem\"\nclient_ca = \"{root}/ca/ca.pem\"\n[store]\npath = \"{root}/backend.db\"\n[audit]\npath = \"{root}/audit.log\"\nfsync = true\n[limits]\noperator_commands_per_sec = 0\nagent_commands_per_sec = 0\nhub_connects_per_ip_per_sec = 0\nhub_connects_per_agent_per_sec = 0\nhub_handshakes_per_sec = 0\n[[tokens]]\nname = \"bench\"\nsha256 = \"{h}\"\nrole = \"admin\"\n",
            h = backend_agent::auth::token_sha256_hex(TOKEN),
        );
        for (id, pin) in agents {
            t.push_str(&format!("[[agents]]\nid = \"{id}\"\npins = [\"{pin}\"]\n"));
        }
        if std::env::var_os("BENCH_KEEP").is_some() {
            eprintln!("BENCH_KEEP: keeping {}", pki.path().display());
            pki.dir.disable_cleanup(true);
        }
        let config = pki.path().join("backend.toml");
        std::fs::write(&config, t)?;
        let mut mesh = Mesh {
            pki,
            http,
            hub,
            config,
            backend: None,
            binary,
            starts: 0,
        };
        mesh.launch().await?;
        Ok(mesh)
    }

    /// Starts the backend process and waits until `/health` answers.
    pub async fn launch(&mut self) -> Result<()> {
        self.starts += 1;
        let log = self.pki.path().join(format!("backend-{}.log", self.starts));
        self.backend = Some(spawn_daemon(&self.binary, &self.config, &log)?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.connected().await.is_err() {
            if let Some(status) = self
                .backend
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("backend exited with {status}:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("backend did not answer /health within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Removes the temp dir with a detached `rm -rf` (it ends by itself) instead of on drop;
    /// falls back to removing it here if `rm` cannot start. Kept with `BENCH_KEEP`.
    pub fn remove_in_background(mut self) {
        if std::env::var_os("BENCH_KEEP").is_some() {
            return;
        }
        let spawned = std::process::Command::new("rm")
            .arg("-rf")
            .arg(self.pki.path())
            .stdin(std::process::Stdio::null())
            .spawn();
        if spawned.is_ok() {
            self.pki.dir.disable_cleanup(true);
        }
    }

    /// SIGKILL, reaped: no drain, no flush.
    pub async fn kill_9(&mut self) -> Result<()> {
        if let Some(mut child) = self.backend.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// The backend's pid.
    pub fn pid(&self) -> u32 {
        self.backend.as_ref().and_then(Child::id).unwrap_or(0)
    }

    /// `agents_connected` from `/health` (a new connection each call).
    pub async fn connected(&self) -> Result<u64> {
        let mut c = Client::connect(self.http, None).await?;
        let (status, v) = c.call("GET", "/health", None).await?;
        if status != 200 {
            bail!("/health answered {status}");
        }
        v["agents_connected"].as_u64().context("agents_connected")
    }

    /// Polls `/health` until at least `n` agents are connected; the time it took.
    pub async fn wait_connected(&self, n: u64, limit: Duration) -> Result<Duration> {
        // A failed poll counts as the last answer.
        let last = std::cell::Cell::new(0);
        until_connected(n, limit, || async {
            last.set(self.connected().await.unwrap_or(last.get()));
            last.get()
        })
        .await
    }

    /// Writes a `gateway.toml` for `id` (certificate in `cert_dir`) under `configs/`.
    pub fn agent_config(
        &self,
        id: &str,
        cert_dir: &Path,
        fleet: &str,
        extra: &str,
    ) -> Result<PathBuf> {
        let url = format!("\"wss://127.0.0.1:{}/ws/agent\"", self.hub.port());
        write_agent_config(&self.pki, id, cert_dir, fleet, &url, extra)
    }
}

/// Polls `count` until it reaches `n`; the time it took, or an error after `limit`.
pub async fn until_connected<F, Fut>(n: u64, limit: Duration, mut count: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let started = Instant::now();
    let mut last = 0;
    while started.elapsed() < limit {
        last = count().await;
        if last >= n {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("only {last} of {n} agents connected after {limit:?}")
}

/// Writes `configs/<id>.toml` under the PKI dir: agent `id` (certificate in `cert_dir`,
/// label `fleet`) reaching `backend_url` (a TOML string or list), plus `extra`.
pub fn write_agent_config(
    pki: &Pki,
    id: &str,
    cert_dir: &Path,
    fleet: &str,
    backend_url: &str,
    extra: &str,
) -> Result<PathBuf> {
    let state = pki.path().join("state").join(id);
    std::fs::create_dir_all(&state)?;
    let certs = cert_dir.display();
    let text = format!(
        "[agent]\nid = \"{id}\"\nsite = \"bench\"\nlabels = {{ fleet = \"{fleet}\" }}\nstate_dir = \"{state}\"\n\n[outbound]\nbackend_url = {backend_url}\nca = \"{certs}/ca.pem\"\ncert = \"{certs}/cert.pem\"\nkey = \"{certs}/key.pem\"\nserver_pins = [\"{pin}\"]\n{extra}\n",
        state = state.display(),
        pin = pki.server.pin,
    );
    let dir = pki.path().join("configs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}
