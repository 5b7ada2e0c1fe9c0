//! Phases 2–7 against the real backend: connect storm, idle memory, latency, throughput,
//! fan-out and kill -9 restart. Each records its `mesh.*` keys into the [`Report`].

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::client::Client;
use crate::mesh::{Mesh, GATEWAY, PROBE, TOKEN};
use crate::procs::{sibling, spawn_daemon};
use crate::raw::{concurrent, settle};
use crate::report::Report;
use crate::swarm::Swarms;
use crate::sys::{quantile, rss_kib, unix_ms};

/// Generous bound for the fleet to come up: a minute plus 20 ms per agent.
pub fn fleet_patience(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20 * n as u64)
}

/// Phase 2: every swarm agent at once; `connect_per_sec` = agents listed by the API ÷ time.
/// `base` agents were connected before.
pub async fn connect(
    mesh: &Mesh,
    swarms: &mut Swarms,
    n: usize,
    base: u64,
    report: Option<&mut Report>,
) -> Result<()> {
    let started = Instant::now();
    swarms.go().await?;
    mesh.wait_connected(base + n as u64, fleet_patience(n))
        .await?;
    let took = started.elapsed();
    let mut api = Client::connect(mesh.http, Some(TOKEN)).await?;
    let (_, listed) = api
        .call(
            "GET",
            "/api/v1/agents?connected=true&label=fleet=swarm",
            None,
        )
        .await?;
    let listed = listed["count"].as_u64().context("agents count")?;
    eprintln!("connect: {listed} agents listed after {took:?}");
    if let Some(report) = report {
        report.mesh("connect_per_sec", listed as f64 / took.as_secs_f64());
    }
    Ok(())
}

/// Phase 3: backend RSS delta per agent, and one real `gateway-agent` process's RSS.
pub async fn idle(
    mesh: &Mesh,
    n: usize,
    rss_before: u64,
    cert_dir: &std::path::Path,
    share: Duration,
    report: &mut Report,
) -> Result<()> {
    settle().await;
    let after = rss_kib(mesh.pid()).context("backend RSS")?;
    report.mesh(
        "idle_bytes_per_agent",
        after.saturating_sub(rss_before) as f64 * 1024.0 / n.max(1) as f64,
    );
    let binary = sibling("gateway-agent")?;
    let config = mesh.agent_config(GATEWAY, cert_dir, "gateway", "")?;
    let log = mesh.pki.path().join("gateway-agent.log");
    let mut gateway = spawn_daemon(&binary, &config, &log)?;
    let mut api = Client::connect(mesh.http, Some(TOKEN)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, v) = api
            .call("GET", &format!("/api/v1/agents/{GATEWAY}"), None)
            .await?;
        if status == 200 && v["connected"] == true {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway-agent process never connected (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Connected and idle for a while (at least a second, a fifth of a phase).
    tokio::time::sleep(share.max(Duration::from_secs(5)) / 5).await;
    let pid = gateway.id().context("gateway pid")?;
    report.mesh(
        "gateway_idle_rss_kib",
        rss_kib(pid).context("gateway RSS")? as f64,
    );
    gateway.start_kill()?;
    gateway.wait().await?;
    Ok(())
}

/// Sequential synchronous `ping`s to the probe agent over one keep-alive connection.
pub async fn rtt(mesh: &Mesh, length: Duration) -> Result<Vec<f64>> {
    let mut api = Client::connect(mesh.http, Some(TOKEN)).await?;
    let path = format!("/api/v1/agents/{PROBE}/commands");
    let body = r#"{"verb":"ping","wait":true}"#;
    let mut samples = Vec::new();
    let stop = Instant::now() + length;
    while Instant::now() < stop || samples.len() < 10 {
        let t = Instant::now();
        let (status, v) = api.call("POST", &path, Some(body)).await?;
        if status != 200 || v["status"] != "ok" {
            bail!("ping: {status} {v}");
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// Phase 4, first half (before the storm): `rtt_p50_us`, `rtt_p99_us`.
pub async fn latency_alone(mesh: &Mesh, length: Duration, report: &mut Report) -> Result<()> {
    let mut s = rtt(mesh, length).await?;
    report.mesh("rtt_p50_us", quantile(&mut s, 0.5));
    report.mesh("rtt_p99_us", quantile(&mut s, 0.99));
    Ok(())
}

/// Phase 4, second half (all N connected and idle): `rtt_loaded_idle_p99_us`.
pub async fn latency_loaded(mesh: &Mesh, length: Duration, report: &mut Report) -> Result<()> {
    let mut s = rtt(mesh, length).await?;
    report.mesh("rtt_loaded_idle_p99_us", quantile(&mut s, 0.99));
    Ok(())
}

/// Phase 5: 64 keep-alive API clients, synchronous pings to the probe agent; only commands
/// that completed `ok` count.
pub async fn throughput(mesh: &Mesh, length: Duration, report: &mut Report) -> Result<()> {
    let path = format!("/api/v1/agents/{PROBE}/commands");
    let body = r#"{"verb":"ping","wait":true}"#.to_owned();
    let (rate, p99) = concurrent(mesh.http, Some(TOKEN), &path, body, length).await?;
    report.mesh("commands_per_sec", rate);
    report.mesh("rtt_loaded_p99_us", p99);
    Ok(())
}

/// Phase 6: one job to every swarm agent (`max_concurrency` = N) until every result is in.
pub async fn fanout(mesh: &Mesh, n: usize, report: &mut Report) -> Result<()> {
    let mut api = Client::connect(mesh.http, Some(TOKEN)).await?;
    let body =
        json!({"selector": {"labels": {"fleet": "swarm"}}, "verb": "ping", "max_concurrency": n});
    let started = Instant::now();
    let (status, job) = api
        .call("POST", "/api/v1/commands", Some(&body.to_string()))
        .await?;
    if status != 202 {
        bail!("fan-out job refused: {status} {job}");
    }
    let id = job["job_id"].as_str().context("job_id")?.to_owned();
    // Reading a job renders every result: poll less often for bigger fleets.
    let every = Duration::from_millis(10 + n as u64 / 20);
    let deadline = started + fleet_patience(n);
    loop {
        let (_, v) = api
            .call("GET", &format!("/api/v1/commands/{id}"), None)
            .await?;
        if v["summary"]["pending"] == 0 {
            let took = started.elapsed();
            eprintln!("fan-out: {} in {took:?}", v["summary"]);
            report.mesh("fanout_ms", took.as_secs_f64() * 1000.0);
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("fan-out not finished: {}", v["summary"]);
        }
        tokio::time::sleep(every).await;
    }
}

/// Phase 7: kill -9 and restart the backend at once; from the kill until all `total` agents
/// are connected again (`backend_restart_ms` says how much of it was the backend starting),
/// and each swarm agent's own time from the kill to its new session.
pub async fn restart(
    mesh: &mut Mesh,
    swarms: &mut Swarms,
    n: usize,
    total: u64,
    report: &mut Report,
) -> Result<()> {
    swarms.ask("mark", Duration::from_secs(60)).await?;
    let killed = Instant::now();
    let killed_unix = unix_ms();
    mesh.kill_9().await?;
    mesh.launch().await?;
    report.mesh(
        "backend_restart_ms",
        killed.elapsed().as_secs_f64() * 1000.0,
    );
    mesh.wait_connected(total, fleet_patience(n)).await?;
    report.mesh("reconnect_all_ms", killed.elapsed().as_secs_f64() * 1000.0);
    let (times, missing) = swarms.reconnected(Duration::from_secs(30)).await?;
    if missing > 0 {
        eprintln!("restart: {missing} agents did not report a new session");
    }
    let mut after: Vec<f64> = times.iter().map(|t| (t - killed_unix).max(0.0)).collect();
    let mean = after.iter().sum::<f64>() / after.len().max(1) as f64;
    let max = after.iter().copied().fold(0.0, f64::max);
    report.mesh("reconnect_p99_ms", quantile(&mut after, 0.99));
    report.mesh(
        "reconnect_max_over_mean",
        if mean > 0.0 { max / mean } else { 0.0 },
    );
    Ok(())
}
