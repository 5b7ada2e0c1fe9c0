//! `fleet`: starts a real `backend-agent` process, connects N agent sessions over real mutual
//! TLS (each with its own certificate and pin), and reports connect times and backend RSS.
//!
//! ```sh
//! cargo build --release -p backend-agent -p agentmesh-bench
//! ./target/release/fleet --agents 1000 [--backend target/release/backend-agent]
//! ```
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_bench::{free_port, rss_kib, wait_health, write_backend_config, ChildGuard, TOKEN};
use agentmesh_e2e::{http, raw, Pki};
use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use mesh_certs::{Issued, Validity};
use tokio::sync::Semaphore;

struct Args {
    agents: usize,
    backend: PathBuf,
    parallel: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        agents: 1000,
        backend: PathBuf::from("target/release/backend-agent"),
        parallel: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => args.agents = value.parse()?,
            "--backend" => args.backend = value.into(),
            "--parallel" => args.parallel = value.parse()?,
            other => bail!("unknown flag {other} (known: --agents, --backend, --parallel)"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let pki = Pki::new();
    eprintln!("issuing {} agent certificates...", args.agents);
    let agents: Vec<Issued> = (0..args.agents)
        .map(|i| {
            pki.ca
                .issue_agent(&format!("bench-{i:05}"), Validity::days(1))
        })
        .collect::<Result<_, _>>()?;
    let (http_addr, hub_addr) = (free_port()?, free_port()?);
    let enrol: Vec<(String, String)> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("bench-{i:05}"), a.pin.clone()))
        .collect();
    let config = write_backend_config(pki.path(), &pki, http_addr, hub_addr, &enrol)?;
    let child = Command::new(&args.backend)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with cargo build --release -p backend-agent)",
                args.backend.display()
            )
        })?;
    let pid = child.id();
    let _backend = ChildGuard(child);
    wait_health(http_addr).await?;
    let rss_idle = rss_kib(pid).unwrap_or(0);

    let ca = Arc::new(pki.ca.cert_pem().to_owned());
    let started = Instant::now();
    let first = connect_one(hub_addr, &ca, &agents[0], "bench-00000").await?;
    let first_listed = {
        loop {
            let r = http::get(http_addr, "/api/v1/agents/bench-00000", Some(TOKEN)).await;
            if r.status == 200 && r.json()["connected"] == true {
                break started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let permits = Arc::new(Semaphore::new(args.parallel));
    let mut tasks = Vec::new();
    let all_started = Instant::now();
    for (i, agent) in agents.iter().enumerate().skip(1) {
        let permit = permits.clone().acquire_owned().await?;
        let ca = ca.clone();
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("bench-{i:05}");
            let client = connect_one(hub_addr, &ca, &agent, &id).await;
            drop(permit);
            client
        }));
    }
    let mut sessions = vec![first];
    for t in tasks {
        sessions.push(t.await??);
    }
    let all_connected = all_started.elapsed();
    // Keep every session answering pings in the background while we measure.
    let mut readers = Vec::new();
    for mut s in sessions {
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = s.ws.next().await {}
        }));
    }
    let listed = http::get(http_addr, "/api/v1/agents?connected=true", Some(TOKEN)).await;
    let connected = listed.json()["count"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_loaded = rss_kib(pid).unwrap_or(0);
    let result = serde_json::json!({
        "agents": args.agents,
        "connected": connected,
        "first_agent_connect_to_listed_ms": first_listed.as_secs_f64() * 1000.0,
        "all_agents_connect_secs": all_connected.as_secs_f64(),
        "backend_rss_idle_kib": rss_idle,
        "backend_rss_loaded_kib": rss_loaded,
        "backend_rss_per_agent_kib": (rss_loaded.saturating_sub(rss_idle)) as f64 / args.agents as f64,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    for r in readers {
        r.abort();
    }
    Ok(())
}

async fn connect_one(
    hub: SocketAddr,
    ca: &str,
    agent: &Issued,
    id: &str,
) -> Result<raw::RawClient> {
    let mut client = raw::connect(hub, ca, agent)
        .await
        .map_err(anyhow::Error::msg)?;
    client.send_json(&raw::hello(id, 1)).await;
    let welcome = client
        .next_json(Duration::from_secs(30))
        .await
        .context("no welcome")?;
    if welcome["type"] != "welcome" {
        bail!("{id}: expected welcome, got {welcome}");
    }
    Ok(client)
}
