//! Phase 4, latency: `rtt_p50_us`, `rtt_p99_us` (one agent), `rtt_loaded_idle_p99_us`
//! (all N connected and idle).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::client::Client;
use crate::mesh::{Mesh, PROBE, TOKEN};
use crate::report::Report;
use crate::sys::quantile;

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
