//! `command-throughput`: commands/s accepted by a real `backend-agent` process with a real
//! `gateway-agent` connected, once with durable audit (`command_requested` fsynced before
//! dispatch, group commit) and once with audit writes but no fsync — same run, same load.
//!
//! ```sh
//! cargo build --release -p backend-agent -p gateway-agent -p agentmesh-bench
//! ./target/release/command-throughput --secs 5 --clients 32
//! ```
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_bench::{start_pair, TOKEN};
use agentmesh_e2e::http;
use anyhow::{bail, Context, Result};

struct Args {
    secs: u64,
    clients: usize,
    bin_dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut a = Args {
        secs: 5,
        clients: 32,
        bin_dir: PathBuf::from("target/release"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => a.secs = value.parse()?,
            "--clients" => a.clients = value.parse()?,
            "--bin-dir" => a.bin_dir = value.into(),
            other => bail!("unknown flag {other} (known: --secs, --clients, --bin-dir)"),
        }
    }
    let durable = run(&a, true).await?;
    let no_fsync = run(&a, false).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "clients": a.clients,
            "secs": a.secs,
            "commands_per_sec_durable_audit": durable,
            "commands_per_sec_audit_no_fsync": no_fsync,
            "note": "async commands (wait=false) through the HTTP API, one TCP connection per request, loopback; each command_requested is fsynced (group commit) before dispatch in the durable run",
        }))?
    );
    Ok(())
}

async fn run(a: &Args, fsync: bool) -> Result<f64> {
    let pair = start_pair(&a.bin_dir, "bench-tp", fsync).await?;
    let http_addr = pair.http;
    let accepted = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(a.secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            let body = r#"{"verb":"ping"}"#;
            while Instant::now() < stop_at {
                let r = http::request(
                    http_addr,
                    "POST",
                    "/api/v1/agents/bench-tp/commands",
                    Some(TOKEN),
                    Some(body),
                )
                .await;
                if r.status == 202 {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
