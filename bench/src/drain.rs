//! `drain-restart`: N agent sessions on a real `backend-agent` process; SIGTERM (drain), a new
//! process on the same ports, and each session reconnecting at the `reconnect_after_ms` its
//! `drain` frame gave it (as the gateway agent does, without its jitter). Reports the slots
//! handed out and how long the fleet took to come back.
//!
//! ```sh
//! cargo build --release -p backend-agent -p agentmesh-bench
//! ./target/release/drain-restart --agents 300 --rate 200
//! ```
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_bench::{free_port, wait_health, write_backend_config, ChildGuard};
use agentmesh_e2e::{raw, Pki};
use anyhow::{bail, Context, Result};
use mesh_certs::{Issued, Validity};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn spawn(backend: &PathBuf, config: &PathBuf) -> Result<Child> {
    Command::new(backend)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", backend.display()))
}

async fn session(
    hub: std::net::SocketAddr,
    ca: &str,
    agent: &Issued,
    id: &str,
) -> Result<raw::RawClient> {
    let mut client = raw::connect(hub, ca, agent)
        .await
        .map_err(anyhow::Error::msg)?;
    client.send_json(&raw::hello(id, 1)).await;
    match client.next_json(Duration::from_secs(30)).await {
        Some(w) if w["type"] == "welcome" => Ok(client),
        other => bail!("{id}: no welcome: {other:?}"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = arg("--agents", "300").parse()?;
    let rate: u64 = arg("--rate", "200").parse()?;
    let base_ms: u64 = arg("--base-ms", "1000").parse()?;
    let backend = PathBuf::from(arg("--backend", "target/release/backend-agent"));
    let pki = Pki::new();
    let agents: Vec<Issued> = (0..n)
        .map(|i| {
            pki.ca
                .issue_agent(&format!("drain-{i:05}"), Validity::days(1))
        })
        .collect::<Result<_, _>>()?;
    let enrol: Vec<(String, String)> = (0..n)
        .map(|i| (format!("drain-{i:05}"), agents[i].pin.clone()))
        .collect();
    let (http_addr, hub_addr) = (free_port()?, free_port()?);
    let config = write_backend_config(pki.path(), &pki, http_addr, hub_addr, &enrol)?;
    let text = std::fs::read_to_string(&config)?
        .replace(
            "hub_handshakes_per_sec = 0\n",
            &format!("hub_handshakes_per_sec = {rate}\nhub_handshake_burst = {rate}\n"),
        )
        .replace(
            "[store]\n",
            &format!("drain_reconnect_after_ms = {base_ms}\ndrain_grace_secs = 0\n[store]\n"),
        );
    std::fs::write(&config, text)?;
    let mut first = ChildGuard(spawn(&backend, &config)?);
    wait_health(http_addr).await?;

    let ca = Arc::new(pki.ca.cert_pem().to_owned());
    let mut tasks = Vec::new();
    for (i, agent) in agents.into_iter().enumerate() {
        let id = format!("drain-{i:05}");
        let mut client = session(hub_addr, &ca, &agent, &id).await?;
        let ca = ca.clone();
        tasks.push(tokio::spawn(async move {
            let drain = client
                .next_json(Duration::from_secs(600))
                .await
                .context("no drain")?;
            let slot = drain["reconnect_after_ms"]
                .as_u64()
                .context("no reconnect_after_ms")?;
            tokio::time::sleep(Duration::from_millis(slot)).await;
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                if session(hub_addr, &ca, &agent, &id).await.is_ok() {
                    return Ok::<_, anyhow::Error>((slot, Instant::now(), attempts));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let term = Instant::now();
    Command::new("kill")
        .args(["-TERM", &first.0.id().to_string()])
        .status()?;
    first.0.wait()?;
    let stopped = term.elapsed();
    let _second = ChildGuard(spawn(&backend, &config)?);
    wait_health(http_addr).await?;
    let up = Instant::now();

    let mut slots = Vec::new();
    let mut back = Vec::new();
    let mut retries = 0;
    for t in tasks {
        let (slot, at, attempts) = t.await??;
        slots.push(slot);
        back.push(at.saturating_duration_since(up).as_secs_f64());
        retries += attempts - 1;
    }
    slots.sort_unstable();
    back.sort_by(f64::total_cmp);
    let mean = back.iter().sum::<f64>() / n as f64;
    let last = back.last().copied().unwrap_or(0.0);
    let mut distinct_slots = slots.clone();
    distinct_slots.dedup();
    let distinct = distinct_slots.len();
    let result = serde_json::json!({
        "agents": n,
        "hub_handshakes_per_sec": rate,
        "window_n_over_rate_secs": n as f64 / rate as f64,
        "slots_ms_min_max": [slots.first(), slots.last()],
        "slots_distinct": distinct,
        "sigterm_to_exit_secs": stopped.as_secs_f64(),
        "term_to_all_back_secs": term.elapsed().as_secs_f64(),
        "restart_up_to_all_back_secs": last,
        "reconnect_after_up_mean_secs": mean,
        "reconnect_after_up_max_over_mean": if mean > 0.0 { last / mean } else { 0.0 },
        "failed_reconnect_attempts": retries,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
