//! Phase 6, fan-out: `fanout_ms`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::fleet_patience;
use crate::client::Client;
use crate::mesh::{Mesh, TOKEN};
use crate::report::Report;

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
