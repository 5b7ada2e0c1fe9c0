//! `ping-latency`: a real `backend-agent` process and a real `gateway-agent` process on
//! loopback; measures agent start → listed, then N sequential synchronous `ping` commands
//! through the HTTP API (p50/p90/p99).
//!
//! ```sh
//! cargo build --release -p backend-agent -p gateway-agent -p agentmesh-bench
//! ./target/release/ping-latency --calls 1000
//! ```
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use agentmesh_bench::{quantile, rss_kib, start_pair, TOKEN};
use agentmesh_e2e::http;
use anyhow::{bail, Context, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let mut calls = 1000usize;
    let mut bin_dir = PathBuf::from("target/release");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--calls" => calls = value.parse()?,
            "--bin-dir" => bin_dir = value.into(),
            other => bail!("unknown flag {other} (known: --calls, --bin-dir)"),
        }
    }
    let pair = start_pair(&bin_dir, "bench-ping", true).await?;
    let (http_addr, start_to_listed) = (pair.http, pair.start_to_listed);

    let body = r#"{"verb":"ping","wait":true}"#;
    let mut samples = Vec::with_capacity(calls);
    let all = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let r = http::request(
            http_addr,
            "POST",
            "/api/v1/agents/bench-ping/commands",
            Some(TOKEN),
            Some(body),
        )
        .await;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.status != 200 || r.json()["status"] != "ok" {
            bail!("ping failed: {} {}", r.status, r.body);
        }
    }
    let total = all.elapsed();
    samples.sort_by(|a, b| a.total_cmp(b));
    let result = serde_json::json!({
        "agent_process_start_to_listed_ms": start_to_listed.as_secs_f64() * 1000.0,
        "calls": calls,
        "sync_ping_ms": {
            "p50": quantile(&samples, 0.50),
            "p90": quantile(&samples, 0.90),
            "p99": quantile(&samples, 0.99),
            "max": quantile(&samples, 1.0),
        },
        "throughput_per_sec": calls as f64 / total.as_secs_f64(),
        "backend_rss_kib": rss_kib(pair.backend_pid),
        "gateway_rss_kib": rss_kib(pair.gateway_pid),
        "note": "one new TCP connection per request (Connection: close), sequential, loopback",
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
