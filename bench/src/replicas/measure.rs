//! The `cluster.*` figures of `bench --replicas K`, in the order they are measured: connect
//! storm (and CPU per connect, RSS per agent), same- and cross-replica latency, throughput
//! (and CPU, PostgreSQL write transactions and WAL bytes per command), failover.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_e2e::postgres::TestPostgres;
use anyhow::{bail, Context, Result};

use super::{probe_id, Cluster};
use crate::client::Client;
use crate::mesh::TOKEN;
use crate::phases::fleet_patience;
use crate::raw::{settle, CLIENTS};
use crate::report::Report;
use crate::swarm::Swarms;
use crate::sys::{progress, quantile, rss_kib};

/// Every figure, one step after the other.
pub async fn all(
    cluster: &mut Cluster,
    fleet: &mut Swarms,
    n: usize,
    length: Duration,
    report: &mut Report,
) -> Result<()> {
    let k = cluster.replicas.len();
    settle().await;
    let pids: Vec<u32> = cluster.replicas.iter().map(|r| r.pid()).collect();
    let rss_before: u64 = pids.iter().filter_map(|p| rss_kib(*p)).sum();
    let cpu_before = cpu_us(&pids);
    let pg_before = pg_writes(&cluster.db);
    progress(&format!(
        "cluster: connect storm, {n} agents over {k} replicas"
    ));
    let started = Instant::now();
    fleet.go().await?;
    cluster
        .wait_connected((k + n) as u64, fleet_patience(n))
        .await?;
    let took = started.elapsed().as_secs_f64();
    report.cluster("replicas", k as f64);
    report.cluster("connect_per_sec", n as f64 / took);
    report.cluster(
        "cpu_us_per_connect",
        (cpu_us(&pids) - cpu_before) / n as f64,
    );
    if let (Some(before), Some(after)) = (pg_before, pg_writes(&cluster.db)) {
        // Not required positive by the smoke test: a connect may write nothing.
        report.cluster(
            "pg_write_xacts_per_connect",
            (after[0] - before[0]) / n as f64,
        );
    }
    settle().await;
    let rss_after: u64 = pids.iter().filter_map(|p| rss_kib(*p)).sum();
    report.cluster(
        "idle_bytes_per_agent",
        rss_after.saturating_sub(rss_before) as f64 * 1024.0 / n as f64,
    );
    let mut held = Vec::new();
    for r in &cluster.replicas {
        held.push(r.connected().await?);
    }
    progress(&format!("cluster: agents held per replica {held:?}"));
    report.cluster(
        "agents_per_replica_max",
        held.iter().copied().max().unwrap_or(0) as f64,
    );

    progress("cluster: latency, same replica then across replicas");
    let (a, b) = (cluster.replicas[0].http, cluster.replicas[1].http);
    let mut same = rtt(a, &probe_id(0), length).await?;
    report.cluster("same_replica_rtt_p50_us", quantile(&mut same, 0.5));
    let mut cross = rtt(b, &probe_id(0), length).await?;
    report.cluster("cross_replica_rtt_p50_us", quantile(&mut cross, 0.5));

    progress(&format!(
        "cluster: throughput, {CLIENTS} clients over {k} APIs"
    ));
    let pg_before = pg_writes(&cluster.db);
    let cpu_before = cpu_us(&pids);
    let apis: Vec<SocketAddr> = cluster.replicas.iter().map(|r| r.http).collect();
    let (rate, done) = throughput(&apis, length).await?;
    let cpu = cpu_us(&pids) - cpu_before;
    report.cluster("commands_per_sec", rate);
    report.cluster("cpu_us_per_command", cpu / done.max(1) as f64);
    if let (Some(before), Some(after)) = (pg_before, pg_writes(&cluster.db)) {
        let per = |i: usize| (after[i] - before[i]) / done.max(1) as f64;
        report.cluster("pg_write_xacts_per_command", per(0));
        report.cluster("pg_wal_bytes_per_command", per(1));
    }
    failover(cluster, n, report).await
}

/// kill -9 of the last replica → every agent it held connected to the others
/// (`failover_ms`, from `/health` of the survivors) and listed by the API of replica 0
/// (`failover_listed_ms`, which includes a list waiting for the dead member's lease).
async fn failover(cluster: &mut Cluster, n: usize, report: &mut Report) -> Result<()> {
    let victim = cluster.replicas.len() - 1;
    let total = cluster.connected().await;
    // Its probe is pinned to it and stays away: everything else moves.
    let moving = cluster.replicas[victim]
        .connected()
        .await?
        .saturating_sub(1);
    progress(&format!(
        "cluster: failover, kill -9 replica r{victim} holding {moving} swarm agents"
    ));
    let killed = Instant::now();
    cluster.replicas[victim].kill_9().await?;
    cluster.wait_connected(total - 1, fleet_patience(n)).await?;
    report.cluster("failover_ms", killed.elapsed().as_secs_f64() * 1000.0);
    report.cluster("failover_agents", moving as f64);
    let mut api = Client::connect(cluster.replicas[0].http, Some(TOKEN)).await?;
    let deadline = killed + fleet_patience(n);
    loop {
        // Counted by id: a `label=` filter on a fleet-wide list only matches agents whose
        // labels the asked replica has seen in a `hello`.
        let (_, v) = api
            .call("GET", "/api/v1/agents?connected=true", None)
            .await?;
        let listed = v["agents"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|a| a["id"].as_str().is_some_and(is_swarm))
                .count()
        });
        if listed == n {
            break;
        }
        if Instant::now() > deadline {
            bail!("after the failover replica r0 lists {listed} of {n} swarm agents: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.cluster(
        "failover_listed_ms",
        killed.elapsed().as_secs_f64() * 1000.0,
    );
    Ok(())
}

/// A swarm agent's id (`bench-` and digits; not a probe).
fn is_swarm(id: &str) -> bool {
    id.strip_prefix("bench-")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

/// Sequential synchronous `ping`s to `agent` through the API at `http`: latencies (µs).
async fn rtt(http: SocketAddr, agent: &str, length: Duration) -> Result<Vec<f64>> {
    let mut api = Client::connect(http, Some(TOKEN)).await?;
    let path = format!("/api/v1/agents/{agent}/commands");
    let body = r#"{"verb":"ping","wait":true}"#;
    let mut samples = Vec::new();
    let stop = Instant::now() + length;
    while Instant::now() < stop || samples.len() < 10 {
        let t = Instant::now();
        let (status, v) = api.call("POST", &path, Some(body)).await?;
        if status != 200 || v["status"] != "ok" {
            bail!("ping {agent} via {http}: {status} {v}");
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// [`CLIENTS`] keep-alive clients, client j on API `j % K` pinging probe `(j / K) % K`: every
/// (API, holder) pair equally often, so 1/K of the commands stay on one replica. Returns
/// (completed `ok` commands per second, how many).
async fn throughput(apis: &[SocketAddr], length: Duration) -> Result<(f64, usize)> {
    let k = apis.len();
    let started = Instant::now();
    let stop = started + length;
    let mut tasks = Vec::new();
    for j in 0..CLIENTS {
        let mut client = Client::connect(apis[j % k], Some(TOKEN)).await?;
        let path = format!("/api/v1/agents/{}/commands", probe_id((j / k) % k));
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            while Instant::now() < stop {
                let (status, v) = client
                    .call("POST", &path, Some(r#"{"verb":"ping","wait":true}"#))
                    .await?;
                if status == 200 && v["status"] == "ok" {
                    ok += 1;
                }
            }
            Ok::<_, anyhow::Error>(ok)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.context("throughput client")??;
    }
    Ok((done as f64 / started.elapsed().as_secs_f64(), done))
}

/// CPU time (user + system) of the processes `pids`, in µs.
fn cpu_us(pids: &[u32]) -> f64 {
    let tick_us = 1e6 / clock_ticks();
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks * tick_us)
        })
        .sum()
}

/// `getconf CLK_TCK` (100 on Linux when it cannot be asked).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// [write transactions so far, WAL bytes so far] of the server: the next transaction id
/// (only transactions that write get one) and the WAL position.
fn pg_writes(db: &str) -> Option<[f64; 2]> {
    let sql = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text || ' ' || \
               pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint::text";
    let rows = TestPostgres::query_strings(db, sql);
    let text = rows.into_iter().next().flatten()?;
    let mut it = text.split(' ').filter_map(|w| w.parse::<f64>().ok());
    Some([it.next()?, it.next()?])
}
