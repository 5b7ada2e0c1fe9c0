//! A cluster of backend replicas for the issue-10 tests: one PostgreSQL database, one
//! nats-server, one PKI whose agent identities `node-00`, `node-01`, … are enrolled on every
//! replica, and N replicas named `r0`, `r1`, … — in-process [`TestHub`]s
//! ([`HubCluster`]) or real `backend-agent` processes ([`ProcessCluster`]).
//!
//! PostgreSQL or nats-server not installed: the start functions return `None` (the test
//! returns, the reason printed), or panic under `AGENTMESH_REQUIRE_EXTERNAL=1` (see
//! [`crate::postgres::bin_dir`] and [`crate::nats::binary`]).

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use mesh_certs::Issued;
use serde_json::Value;

use crate::backend::{HubOptions, VIEWER_TOKEN};
use crate::fleet::VERBS;
use crate::nats::NatsServer;
use crate::postgres::TestPostgres;
use crate::process::BackendProcess;
use crate::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};

/// `[store]` on the PostgreSQL database at `db` (a pool of 4): what a backend on PostgreSQL
/// without `[cluster]` needs.
pub fn store_toml(db: &str) -> String {
    format!("[store]\nurl = \"{db}\"\npool_size = 4\n")
}

/// [`store_toml`] plus `[cluster]` on the nats-server at `nats_url`, naming replica `r{n}`.
pub fn cluster_toml(db: &str, nats_url: &str, n: usize) -> String {
    format!(
        "{}\n[cluster]\nnats_url = \"{nats_url}\"\nreplica_id = \"r{n}\"\n",
        store_toml(db)
    )
}

/// `node-00`, `node-01`, … (`count` of them).
pub fn node_ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("node-{i:02}")).collect()
}

/// What the tests need of a replica, in-process or a child process.
pub trait Replica {
    /// Operator API address.
    fn api(&self) -> SocketAddr;
    /// Hub (agent WebSocket) address.
    fn hub_addr(&self) -> SocketAddr;
}

impl Replica for TestHub {
    fn api(&self) -> SocketAddr {
        self.http
    }
    fn hub_addr(&self) -> SocketAddr {
        self.hub
    }
}

impl Replica for BackendProcess {
    fn api(&self) -> SocketAddr {
        self.http
    }
    fn hub_addr(&self) -> SocketAddr {
        self.hub
    }
}

/// What every replica of a test cluster shares. Fields drop in order: the servers stop
/// before the PKI's temp dir (which holds nats-server's files) goes.
pub struct ClusterBase {
    /// The nats-server.
    pub nats: NatsServer,
    /// The PostgreSQL server.
    pub pg: TestPostgres,
    /// URL of the database every replica shares.
    pub db: String,
    /// Agent ids `node-00`, … (enrolled on every replica).
    pub ids: Vec<String>,
    /// Certificate and its directory for each of [`Self::ids`].
    pub issued: Vec<(Issued, PathBuf)>,
    /// The mesh CA, the hubs' certificate and the test's temp dir.
    pub pki: Pki,
}

impl ClusterBase {
    /// PKI, nats-server, PostgreSQL with a fresh database, and `identities` agent
    /// certificates; `None` when nats-server or PostgreSQL is not installed.
    pub async fn start(identities: usize) -> Option<ClusterBase> {
        Self::start_with_ids(node_ids(identities)).await
    }

    /// Like [`Self::start`], with the agent identities named `ids` instead of `node-00`, ….
    pub async fn start_with_ids(ids: Vec<String>) -> Option<ClusterBase> {
        init_logging();
        let pki = Pki::new();
        let nats = NatsServer::start(pki.path()).await?;
        let pg = TestPostgres::start()?;
        let db = pg.create_database();
        let issued = ids.iter().map(|id| pki.agent(id)).collect();
        Some(ClusterBase {
            nats,
            pg,
            db,
            ids,
            issued,
            pki,
        })
    }

    /// `(id, pin)` of every identity, for the replicas' static `[[agents]]`.
    pub fn enrolment(&self) -> Vec<(&str, &str)> {
        self.ids
            .iter()
            .zip(&self.issued)
            .map(|(id, (c, _))| (id.as_str(), c.pin.as_str()))
            .collect()
    }

    /// `[store]` and `[cluster]` of replica `r{n}`.
    pub fn replica_toml(&self, n: usize) -> String {
        cluster_toml(&self.db, &self.nats.url(), n)
    }

    /// Default hub options with [`Self::replica_toml`] as `extra`.
    pub fn options(&self, n: usize) -> HubOptions {
        HubOptions {
            extra: self.replica_toml(n),
            ..HubOptions::default()
        }
    }

    /// Starts replica `r{n}` in-process.
    pub async fn start_hub(&self, n: usize) -> TestHub {
        self.start_hub_with(n, "").await
    }

    /// Starts replica `r{n}` in-process with `extra` TOML (e.g. `[[tokens]]`) after its
    /// `[store]` and `[cluster]`.
    pub async fn start_hub_with(&self, n: usize, extra: &str) -> TestHub {
        let mut options = self.options(n);
        options.extra.push_str(extra);
        TestHub::start_with(&self.pki, &self.enrolment(), options).await
    }

    /// Starts replica `r{n}` as a real `backend-agent` process.
    pub async fn start_process(&self, n: usize) -> BackendProcess {
        let config = TestHub::write_process_config(&self.pki, &self.enrolment(), self.options(n));
        BackendProcess::start(&config).await
    }

    /// Writes the gateway config of identity `i` (with the test verbs) for `hubs`: one hub, or
    /// a `backend_url` list the agent picks from at random (multi-hub failover).
    pub fn agent_config(&self, i: usize, hubs: &[SocketAddr]) -> PathBuf {
        self.agent_config_with(i, hubs, VERBS)
    }

    /// Like [`Self::agent_config`], with `verbs` (`[[verbs]]` TOML) instead of the test verbs.
    pub fn agent_config_with(&self, i: usize, hubs: &[SocketAddr], verbs: &str) -> PathBuf {
        let (id, dir) = (&self.ids[i], &self.issued[i].1);
        let pin = self.pki.server.pin.as_str();
        let cfg = agent::write_config(self.pki.path(), id, dir, hubs[0], &[pin], verbs);
        if hubs.len() > 1 {
            let urls: Vec<String> = hubs
                .iter()
                .map(|h| format!("\"wss://{h}/ws/agent\""))
                .collect();
            let text = std::fs::read_to_string(&cfg).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("backend_url"))
                .unwrap()
                .to_owned();
            let list = format!("backend_url = [{}]", urls.join(", "));
            std::fs::write(&cfg, text.replace(&line, &list)).unwrap();
        }
        cfg
    }
}

/// A [`ClusterBase`] with its replicas (index n is `r{n}`) and the agents a test started.
/// Derefs to the base (`m.pki`, `m.ids`, `m.pg.stop()`). Agents stop first, then replicas.
pub struct ClusterFixture<R> {
    /// Agents started through [`Self::start_agent`] or pushed by the test.
    pub agents: Vec<TestAgent>,
    /// The replicas.
    pub replicas: Vec<R>,
    /// What they share.
    pub base: ClusterBase,
}

/// Replicas in-process: registries can be inspected directly.
pub type HubCluster = ClusterFixture<TestHub>;
/// Replicas as real `backend-agent` processes: they can be killed with SIGKILL.
pub type ProcessCluster = ClusterFixture<BackendProcess>;

impl<R> Deref for ClusterFixture<R> {
    type Target = ClusterBase;
    fn deref(&self) -> &ClusterBase {
        &self.base
    }
}

impl<R> DerefMut for ClusterFixture<R> {
    fn deref_mut(&mut self) -> &mut ClusterBase {
        &mut self.base
    }
}

impl<R: Replica> ClusterFixture<R> {
    /// A fixture of replicas the test started itself (e.g. behind nginx).
    pub fn from_parts(base: ClusterBase, replicas: Vec<R>) -> Self {
        ClusterFixture {
            agents: Vec::new(),
            replicas,
            base,
        }
    }

    /// Waits until every replica is ready and sees all the others as peers (membership is
    /// what fleet-wide lists and routing rely on).
    pub async fn wait_peers(&self) {
        wait_peers(self.replicas.iter().map(Replica::api), self.replicas.len()).await;
    }

    /// Starts the agent of identity `i` connected to the replicas `to` (indexes: one, or a
    /// list it picks from at random); it is kept in [`Self::agents`].
    pub fn start_agent(&mut self, i: usize, to: &[usize]) -> &TestAgent {
        let hubs: Vec<SocketAddr> = to.iter().map(|&n| self.replicas[n].hub_addr()).collect();
        let cfg = self.base.agent_config(i, &hubs);
        self.agents.push(TestAgent::start(cfg));
        self.agents.last().unwrap()
    }
}

impl HubCluster {
    /// `replicas` in-process replicas and `identities` enrolled identities (no agents yet);
    /// `None` when nats-server or PostgreSQL is not installed.
    pub async fn start(replicas: usize, identities: usize) -> Option<HubCluster> {
        let base = ClusterBase::start(identities).await?;
        Some(Self::start_on(base, replicas, "").await)
    }

    /// `replicas` in-process replicas on `base`, each with `extra` TOML (see
    /// [`ClusterBase::start_hub_with`]); no agents yet.
    pub async fn start_on(base: ClusterBase, replicas: usize, extra: &str) -> HubCluster {
        let mut hubs = Vec::new();
        for n in 0..replicas {
            hubs.push(base.start_hub_with(n, extra).await);
        }
        ClusterFixture::from_parts(base, hubs)
    }

    /// Starts the agents of the first `count` identities, identity i on replica
    /// i % replicas, each waited for until its replica holds it.
    pub async fn connect_agents(&mut self, count: usize) {
        for i in 0..count {
            let n = i % self.replicas.len();
            self.start_agent(i, &[n]);
            let (agent, hub) = (self.agents.last().unwrap(), &self.replicas[n]);
            agent.wait_connected(hub, &self.base.ids[i]).await;
        }
    }
}

impl ProcessCluster {
    /// `replicas` `backend-agent` processes and `identities` enrolled identities (no agents
    /// yet); `None` when nats-server or PostgreSQL is not installed.
    pub async fn start_processes(replicas: usize, identities: usize) -> Option<ProcessCluster> {
        let base = ClusterBase::start(identities).await?;
        let mut processes = Vec::new();
        for n in 0..replicas {
            processes.push(base.start_process(n).await);
        }
        Some(ClusterFixture::from_parts(base, processes))
    }
}

/// Waits until each API in `apis` answers `/ready` 200 and lists `replicas - 1` peers.
pub async fn wait_peers(apis: impl IntoIterator<Item = SocketAddr>, replicas: usize) {
    for api in apis {
        eventually(
            "every replica ready, seeing its peers",
            PATIENCE,
            || async {
                let r = http::get(api, "/ready", None).await;
                r.status == 200
                    && r.json()["cluster"]["peers"].as_array().map(Vec::len) == Some(replicas - 1)
            },
        )
        .await;
    }
}

/// Whether the API at `api` shows agent `id` connected (on whichever replica holds it).
pub async fn connected_on(api: SocketAddr, id: &str) -> bool {
    let r = http::get(api, &format!("/api/v1/agents/{id}"), Some(VIEWER_TOKEN)).await;
    r.status == 200 && r.json()["connected"] == true
}

/// `GET /api/v1/commands/{id}` on `api` (asserted 200).
pub async fn command_record(api: SocketAddr, id: &str) -> Value {
    let r = http::get(api, &format!("/api/v1/commands/{id}"), Some(VIEWER_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Every record `GET /api/v1/audit?{filter}` on `api` lists (the fleet's, on a cluster),
/// following `next_since` for at most 100 pages of 500.
pub async fn fleet_audit(api: SocketAddr, filter: &str) -> Vec<Value> {
    let base = match filter {
        "" => "/api/v1/audit?limit=500".to_owned(),
        f => format!("/api/v1/audit?limit=500&{f}"),
    };
    let mut out = Vec::new();
    let mut path = base.clone();
    for _ in 0..100 {
        let page = http::get(api, &path, Some(crate::backend::ADMIN_TOKEN))
            .await
            .json();
        out.extend(page["records"].as_array().cloned().unwrap_or_default());
        match page["next_since"].as_str() {
            Some(next) => path = format!("{base}&since={next}"),
            None => break,
        }
    }
    out
}

/// `(id, replica)` of every connected agent `GET /api/v1/agents?connected=true` on `api`
/// lists (the fleet's, on a cluster; `replica` is the holder).
pub async fn connected_agents(api: SocketAddr) -> Vec<(String, String)> {
    let r = http::get(api, "/api/v1/agents?connected=true", Some(VIEWER_TOKEN)).await;
    r.json()["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| {
                    let id = v["id"].as_str().unwrap_or_default().to_owned();
                    (id, v["replica"].as_str().unwrap_or_default().to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}
