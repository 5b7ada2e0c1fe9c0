//! `bench`: one benchmark of the whole system against a raw TLS floor measured in the same run.
//!
//! ```sh
//! cargo build --release -p agentmesh-bench -p backend-agent -p gateway-agent
//! ./target/release/bench --agents 2000 --duration 10 --json bench.json \
//!     --phases raw,connect,idle,latency,throughput,fanout,restart
//! ```
//!
//! A readable table goes to stdout, progress to stderr, every figure to the JSON file.
//! See `bench/README.md` for what each phase measures and what limits each figure.
//!
//! # Layout
//! - [`raw`]: phase 1, the floor (server child process in [`raw::server`]).
//! - [`mesh`]: the PKI, the backend process, agent configs.
//! - [`swarm`]: the hidden `swarm` subcommand (agents in library mode) and its parent side.
//! - [`phases`]: phases 2–7, a module each. [`report`]: table and JSON. [`client`]: keep-alive HTTP.
//! - [`procs`]: child processes. [`sys`]: fd limit, RSS, quantiles, `meta`.
#![forbid(unsafe_code)]

mod client;
mod mesh;
mod phases;
mod procs;
mod raw;
mod replicas;
mod report;
mod swarm;
mod sys;

use std::path::PathBuf;
use std::time::Duration;

use agentmesh_e2e::Pki;
use anyhow::{bail, Context, Result};

use mesh::{issue, source_addr, swarm_id, Mesh, GATEWAY, PROBE};
use report::Report;
use swarm::Swarms;

/// Every phase, in the order they run.
const PHASES: [&str; 7] = [
    "raw",
    "connect",
    "idle",
    "latency",
    "throughput",
    "fanout",
    "restart",
];

const USAGE: &str = "usage: bench [--agents N] [--duration SECS] [--json OUT.json] [--phases raw,connect,idle,latency,throughput,fanout,restart] [--replicas K]\n  --replicas K (K >= 2): K backends on one PostgreSQL and one nats-server instead of the phases; figures under `cluster`";

struct Args {
    agents: usize,
    duration: Duration,
    json: Option<PathBuf>,
    phases: Vec<String>,
    /// `--replicas K`: the cluster run ([`replicas`]) instead of the phases.
    replicas: Option<usize>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        agents: 2000,
        duration: Duration::from_secs(10),
        json: None,
        phases: PHASES.iter().map(|p| p.to_string()).collect(),
        replicas: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--agents" => a.agents = value.parse().context("--agents")?,
            "--duration" => {
                let secs: f64 = value.parse().context("--duration")?;
                if !(secs > 0.0 && secs.is_finite()) {
                    bail!("--duration must be a positive number of seconds");
                }
                a.duration = Duration::from_secs_f64(secs);
            }
            "--json" => a.json = Some(value.into()),
            "--phases" => {
                a.phases = value.split(',').map(str::to_owned).collect();
                if let Some(bad) = a.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    bail!("unknown phase {bad:?} (known: {})", PHASES.join(","));
                }
            }
            "--replicas" => {
                let k: usize = value.parse().context("--replicas")?;
                if k < 2 {
                    bail!("--replicas must be at least 2");
                }
                a.replicas = Some(k);
            }
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    if a.agents == 0 {
        bail!("--agents must be at least 1");
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("swarm") => runtime.block_on(swarm::main(args.get(1).context("swarm LIST")?.as_ref())),
        Some("raw-server") => runtime.block_on(raw::server::main(
            args.get(1).context("raw-server DIR")?.as_ref(),
        )),
        _ => {
            let a = parse_args(&args)?;
            runtime.block_on(run(a))
        }
    }
}

async fn run(mut a: Args) -> Result<()> {
    let (before, soft, hard) = sys::raise_fd_limit()?;
    sys::progress(&format!("fd limit: soft {before} → {soft} (hard {hard})"));
    // The backend holds one socket per agent; the raw floor holds as many in this process.
    let most = soft.saturating_sub(swarm::FD_RESERVE) as usize;
    if a.agents > most {
        sys::progress(&format!(
            "--agents {} does not fit the fd limit {soft}: clamped to {most} (raise `ulimit -Hn`)",
            a.agents
        ));
        a.agents = most;
    }
    let n = a.agents;
    let has = |p: &str| a.phases.iter().any(|q| q == p);
    let mut report = Report {
        meta: sys::meta(n, a.duration.as_secs_f64(), soft),
        ..Report::default()
    };
    let share = a.duration / 4;
    let pki = Pki::new();
    if let Some(k) = a.replicas {
        replicas::run(pki, k, n, a.duration, soft, &mut report).await?;
        println!("{}", report.table(n));
        if let Some(path) = &a.json {
            report.write(path, n)?;
            sys::progress(&format!("wrote {}", path.display()));
        }
        sys::progress("done");
        return Ok(());
    }
    if has("raw") {
        sys::progress(&format!("raw: the floor ({n} idle connections)"));
        let (identity, _) = issue(&pki, "bench-raw")?;
        raw::run(&mut report, pki.path(), &identity, n, share).await?;
    }
    let running = if a.phases.iter().any(|p| p != "raw") {
        Some(mesh_phases(&a, pki, soft, &mut report).await?)
    } else {
        drop(pki);
        None
    };
    println!("{}", report.table(n));
    if let Some(path) = &a.json {
        report.write(path, n)?;
        sys::progress(&format!("wrote {}", path.display()));
    }
    if let Some(running) = running {
        running.teardown().await?;
    }
    sys::progress("done");
    Ok(())
}

/// What is still running after the mesh phases, ended once the report is out.
struct Running {
    mesh: Mesh,
    fleet: Swarms,
    probe: Swarms,
}

impl Running {
    /// Kills the swarm and the backend (SIGKILL: nothing is measured any more) and removes
    /// the temp dir in the background (N agents' files take tens of seconds to delete).
    async fn teardown(self) -> Result<()> {
        self.fleet.kill().await;
        self.probe.kill().await;
        let mut mesh = self.mesh;
        mesh.kill_9().await?;
        mesh.remove_in_background();
        Ok(())
    }
}

async fn mesh_phases(a: &Args, pki: Pki, fd_limit: u64, report: &mut Report) -> Result<Running> {
    let n = a.agents;
    let has = |p: &str| a.phases.iter().any(|q| q == p);
    sys::progress(&format!("issuing {} agent certificates", n + 2));
    let ids: Vec<String> = [PROBE.to_owned(), GATEWAY.to_owned()]
        .into_iter()
        .chain((0..n).map(swarm_id))
        .collect();
    let (enrol, cert_dirs) = issue_all(&pki, &ids)?;
    sys::progress("starting the backend");
    let mut mesh = Mesh::start(pki, &enrol).await?;
    let limits = "\n[limits]\nmax_concurrency = 256\ncommands_per_minute = 100000000\n";
    let probe_config = mesh.agent_config(PROBE, &cert_dirs[0], "probe", limits)?;
    let mut configs = Vec::with_capacity(n);
    for i in 0..n {
        let source = format!("source_addr = \"{}\"", source_addr(i));
        configs.push(mesh.agent_config(&swarm_id(i), &cert_dirs[i + 2], "swarm", &source)?);
    }
    let dir = mesh.pki.path().to_owned();
    let mut probe = Swarms::spawn(&dir, "probe", &[probe_config], fd_limit).await?;
    probe.go().await?;
    mesh.wait_connected(1, phases::fleet_patience(1)).await?;
    if has("latency") {
        sys::progress("latency: one agent connected");
        phases::latency::latency_alone(&mesh, a.duration, report).await?;
    }
    raw::settle().await;
    let rss_before = sys::rss_kib(mesh.pid()).context("backend RSS")?;
    sys::progress(&format!("connect: starting {n} agents"));
    let mut fleet = Swarms::spawn(&dir, "swarm", &configs, fd_limit).await?;
    let connect_report = if has("connect") {
        Some(&mut *report)
    } else {
        None
    };
    phases::connect::connect(&mesh, &mut fleet, n, 1, connect_report).await?;
    if has("idle") {
        phases::idle::idle(&mesh, n, rss_before, &cert_dirs[1], a.duration, report).await?;
    }
    if has("latency") {
        sys::progress(&format!("latency: {n} agents connected"));
        phases::latency::latency_loaded(&mesh, a.duration, report).await?;
    }
    if has("throughput") {
        sys::progress("throughput: 64 clients");
        phases::throughput::throughput(&mesh, a.duration, report).await?;
    }
    if has("fanout") {
        sys::progress(&format!("fan-out: {n} agents"));
        phases::fanout::fanout(&mesh, n, report).await?;
    }
    if has("restart") {
        sys::progress("restart: kill -9 and restart the backend");
        phases::restart::restart(&mut mesh, &mut fleet, n, n as u64 + 1, report).await?;
    }
    Ok(Running { mesh, fleet, probe })
}

/// (id, pin) enrolments and certificate directories.
type Enrolled = (Vec<(String, String)>, Vec<PathBuf>);

/// Issues a certificate per id on every core; returns the (id, pin) enrolments and the
/// certificate directories, in order.
pub(crate) fn issue_all(pki: &Pki, ids: &[String]) -> Result<Enrolled> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = ids.len().div_ceil(threads).max(1);
    let parts = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .chunks(per)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|id| issue(pki, id).map(|(c, dir)| ((id.clone(), c.pin), dir)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("issuing thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(parts.into_iter().flatten().unzip())
}
