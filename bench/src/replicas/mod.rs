//! `bench --replicas K`: K real `backend-agent` replicas on this machine sharing one
//! PostgreSQL store and one nats-server (both started the way the e2e harness starts them:
//! `agentmesh_e2e::postgres::TestPostgres`, `agentmesh_e2e::nats::NatsServer`), the swarm
//! spread over them, and the `cluster.*` figures ([`measure`]).
//!
//! Agents: K probes, probe k pinned to replica k (one URL), and N swarm agents whose
//! `backend_url` lists every replica (each agent shuffles the list, so they spread at random
//! and fail over to the next URL, as in `docs/cluster.md`).

mod measure;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentmesh_e2e::nats::NatsServer;
use agentmesh_e2e::postgres::{on_thread, TestPostgres};
use agentmesh_e2e::Pki;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::process::Child;

use crate::client::Client;
use crate::mesh::{source_addr, swarm_id, until_connected, write_agent_config, TOKEN};
use crate::procs::{sibling, spawn_daemon};
use crate::report::Report;
use crate::swarm::Swarms;

/// Id of the probe agent pinned to replica `k`.
pub fn probe_id(k: usize) -> String {
    format!("bench-probe-r{k}")
}

/// One backend replica process.
pub struct Replica {
    /// Operator API.
    pub http: SocketAddr,
    /// Agent hub.
    pub hub: SocketAddr,
    /// The process (None once killed).
    pub child: Option<Child>,
    log: PathBuf,
}

impl Replica {
    /// Its pid (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).unwrap_or(0)
    }

    /// `agents_connected` from its `/health`.
    pub async fn connected(&self) -> Result<u64> {
        let mut c = Client::connect(self.http, None).await?;
        let (status, v) = c.call("GET", "/health", None).await?;
        if status != 200 {
            bail!("/health answered {status}");
        }
        v["agents_connected"].as_u64().context("agents_connected")
    }

    /// `/ready` status and body.
    async fn ready(&self) -> Result<(u16, Value)> {
        Client::connect(self.http, None)
            .await?
            .call("GET", "/ready", None)
            .await
    }

    /// SIGKILL, reaped.
    pub async fn kill_9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }
}

/// K replicas, their PostgreSQL and nats-server, and the temp dir holding everything.
pub struct Cluster {
    /// The replicas, in order (`replica_id` = `r{k}`).
    pub replicas: Vec<Replica>,
    /// The shared store's URL.
    pub db: String,
    /// Killed and deleted on drop.
    _pg: TestPostgres,
    /// Killed on drop.
    _nats: NatsServer,
    /// Certificates, configs, logs, agent state (deleted on drop).
    pub pki: Pki,
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Cluster {
    /// Starts PostgreSQL, nats-server and `k` replicas enrolling `agents` (id, pin); waits
    /// until every replica is ready and sees the other `k − 1`.
    pub async fn start(pki: Pki, k: usize, agents: &[(String, String)]) -> Result<Cluster> {
        let Some(nats) = NatsServer::start(pki.path()).await else {
            bail!("--replicas needs nats-server (Debian: apt-get install nats-server)");
        };
        let Some(pg) = on_thread(TestPostgres::start) else {
            bail!("--replicas needs PostgreSQL (Debian: apt-get install postgresql)");
        };
        let db = pg.create_database();
        let binary = sibling("backend-agent")?;
        let mut replicas = Vec::new();
        for r in 0..k {
            let (http, hub) = (free_port()?, free_port()?);
            let config = write_config(pki.path(), r, http, hub, &db, &nats.url(), agents)?;
            let log = pki.path().join(format!("replica-{r}.log"));
            let child = Some(spawn_daemon(&binary, &config, &log)?);
            replicas.push(Replica {
                http,
                hub,
                child,
                log,
            });
        }
        let cluster = Cluster {
            replicas,
            db,
            _pg: pg,
            _nats: nats,
            pki,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for r in &cluster.replicas {
            loop {
                let peers = match r.ready().await {
                    Ok((200, v)) => v["cluster"]["peers"].as_array().map_or(0, Vec::len),
                    _ => 0,
                };
                if peers + 1 >= k {
                    break;
                }
                if Instant::now() > deadline {
                    let text = std::fs::read_to_string(&r.log).unwrap_or_default();
                    bail!("replica not ready with {k} members within 60 s:\n{text}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(cluster)
    }

    /// Sum of `agents_connected` over the replicas still running.
    pub async fn connected(&self) -> u64 {
        let mut sum = 0;
        for r in self.replicas.iter().filter(|r| r.child.is_some()) {
            sum += r.connected().await.unwrap_or(0);
        }
        sum
    }

    /// Polls until at least `n` agents are connected over the running replicas.
    pub async fn wait_connected(&self, n: u64, limit: Duration) -> Result<Duration> {
        until_connected(n, limit, || self.connected()).await
    }

    /// Writes a `gateway.toml` for `id` reaching the replicas `hubs` (a list when several).
    pub fn agent_config(
        &self,
        id: &str,
        cert_dir: &Path,
        hubs: &[SocketAddr],
        extra: &str,
    ) -> Result<PathBuf> {
        let urls: Vec<String> = hubs
            .iter()
            .map(|h| format!("\"wss://{h}/ws/agent\""))
            .collect();
        let fleet = if id.starts_with("bench-probe") {
            "probe"
        } else {
            "swarm"
        };
        let urls = format!("[{}]", urls.join(", "));
        write_agent_config(&self.pki, id, cert_dir, fleet, &urls, extra)
    }

    /// Kills every replica (SIGKILL); PostgreSQL, nats-server and the temp dir go on drop.
    pub async fn kill_all(&mut self) {
        for r in &mut self.replicas {
            let _ = r.kill_9().await;
        }
    }
}

/// Writes replica `r`'s config: the single-node bench's settings, `[store] url` and
/// `[cluster]`.
fn write_config(
    dir: &Path,
    r: usize,
    http: SocketAddr,
    hub: SocketAddr,
    db: &str,
    nats: &str,
    agents: &[(String, String)],
) -> Result<PathBuf> {
    let root = dir.display().to_string();
    let mut t = format!(
        "[http]\nlisten = \"{http}\"\n[hub]\nlisten = \"{hub}\"\ncert = \"{root}/server/cert.pem\"\nkey = \"{root}/server/key.pem\"\nclient_ca = \"{root}/ca/ca.pem\"\n[store]\nurl = \"{db}\"\npool_size = 16\n[cluster]\nnats_url = \"{nats}\"\nreplica_id = \"r{r}\"\n[audit]\npath = \"{root}/audit-r{r}.log\"\nfsync = true\n[limits]\noperator_commands_per_sec = 0\nagent_commands_per_sec = 0\nhub_connects_per_ip_per_sec = 0\nhub_connects_per_agent_per_sec = 0\nhub_handshakes_per_sec = 0\n[[tokens]]\nname = \"bench\"\nsha256 = \"{h}\"\nrole = \"admin\"\n",
        h = backend_agent::auth::token_sha256_hex(TOKEN),
    );
    for (id, pin) in agents {
        t.push_str(&format!("[[agents]]\nid = \"{id}\"\npins = [\"{pin}\"]\n"));
    }
    let path = dir.join(format!("replica-{r}.toml"));
    std::fs::write(&path, t)?;
    Ok(path)
}

/// The whole `--replicas` run: setup, [`measure`], teardown. `ids` are the probes then the
/// swarm agents, `enrol`/`cert_dirs` in the same order.
pub async fn run(
    pki: Pki,
    k: usize,
    n: usize,
    length: Duration,
    fd_limit: u64,
    report: &mut Report,
) -> Result<()> {
    let ids: Vec<String> = (0..k).map(probe_id).chain((0..n).map(swarm_id)).collect();
    crate::sys::progress(&format!("issuing {} agent certificates", ids.len()));
    let (enrol, cert_dirs) = crate::issue_all(&pki, &ids)?;
    crate::sys::progress(&format!(
        "starting PostgreSQL, nats-server and {k} replicas"
    ));
    let mut cluster = Cluster::start(pki, k, &enrol).await?;
    let limits = "\n[limits]\nmax_concurrency = 256\ncommands_per_minute = 100000000\n";
    let mut probes = Vec::new();
    for (r, dir) in cert_dirs.iter().take(k).enumerate() {
        let hub = cluster.replicas[r].hub;
        probes.push(cluster.agent_config(&probe_id(r), dir, &[hub], limits)?);
    }
    let hubs: Vec<SocketAddr> = cluster.replicas.iter().map(|r| r.hub).collect();
    let mut configs = Vec::with_capacity(n);
    for (i, dir) in cert_dirs.iter().skip(k).enumerate() {
        let source = format!("source_addr = \"{}\"", source_addr(i));
        configs.push(cluster.agent_config(&swarm_id(i), dir, &hubs, &source)?);
    }
    let dir = cluster.pki.path().to_owned();
    let mut probe = Swarms::spawn(&dir, "probe", &probes, fd_limit).await?;
    probe.go().await?;
    cluster
        .wait_connected(k as u64, crate::phases::fleet_patience(k))
        .await?;
    let mut fleet = Swarms::spawn(&dir, "swarm", &configs, fd_limit).await?;
    let result = measure::all(&mut cluster, &mut fleet, n, length, report).await;
    fleet.kill().await;
    probe.kill().await;
    cluster.kill_all().await;
    result
}
