//! Phase 6, fan-out: `fanout_ms`.
//!
//! A job may target at most `backend_agent::commands::jobs::MAX_TARGETS` (1,000) agents, so
//! for a larger N the fleet is split into that many ids per job, all submitted back to back
//! (each with `max_concurrency` = its size, N in flight in total), and the time runs until
//! the last job has no result pending.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backend_agent::commands::jobs::MAX_TARGETS;
use serde_json::json;

use super::fleet_patience;
use crate::client::Client;
use crate::mesh::{swarm_id, Mesh, TOKEN};
use crate::report::Report;

/// Phase 6: `ping` to every swarm agent through `POST /api/v1/commands` until every result
/// is recorded.
pub async fn fanout(mesh: &Mesh, n: usize, report: &mut Report) -> Result<()> {
    let mut api = Client::connect(mesh.http, Some(TOKEN)).await?;
    let ids: Vec<String> = (0..n).map(swarm_id).collect();
    let started = Instant::now();
    let mut jobs = Vec::new();
    for chunk in ids.chunks(MAX_TARGETS) {
        // One job for the whole fleet when it fits (selected by label, as an operator would).
        let selector = if n <= MAX_TARGETS {
            json!({"labels": {"fleet": "swarm"}})
        } else {
            json!({"ids": chunk})
        };
        let body = json!({"selector": selector, "verb": "ping", "max_concurrency": chunk.len()});
        let (status, job) = api
            .call("POST", "/api/v1/commands", Some(&body.to_string()))
            .await?;
        if status != 202 {
            bail!("fan-out job refused: {status} {job}");
        }
        jobs.push(job["job_id"].as_str().context("job_id")?.to_owned());
    }
    // Reading a job renders every result: poll less often for bigger jobs.
    let every = Duration::from_millis(10 + n.min(MAX_TARGETS) as u64 / 20);
    let deadline = started + fleet_patience(n);
    let (mut ok, mut failed) = (0, 0);
    while let Some(id) = jobs.last() {
        let (_, v) = api
            .call("GET", &format!("/api/v1/commands/{id}"), None)
            .await?;
        if v["summary"]["pending"] == 0 {
            ok += v["summary"]["ok"].as_u64().unwrap_or(0);
            failed += v["summary"]["failed"].as_u64().unwrap_or(0);
            jobs.pop();
            continue;
        }
        if Instant::now() > deadline {
            bail!("fan-out not finished: {}", v["summary"]);
        }
        tokio::time::sleep(every).await;
    }
    let took = started.elapsed();
    crate::sys::progress(&format!("fan-out: {ok} ok, {failed} failed in {took:?}"));
    report.mesh("fanout_ms", took.as_secs_f64() * 1000.0);
    Ok(())
}
