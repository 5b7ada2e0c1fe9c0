//! Phase 2, connect storm: `connect_per_sec`.

use std::time::Instant;

use anyhow::{Context, Result};

use super::fleet_patience;
use crate::client::Client;
use crate::mesh::{Mesh, TOKEN};
use crate::report::Report;
use crate::swarm::Swarms;

/// Phase 2: every swarm agent at once; `connect_per_sec` = agents listed by the API ÷ time.
/// `base` agents were connected before.
pub async fn connect(
    mesh: &Mesh,
    swarms: &mut Swarms,
    n: usize,
    base: u64,
    report: Option<&mut Report>,
) -> Result<()> {
    crate::sys::progress("connect: swarm loaded, go");
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
    crate::sys::progress(&format!("connect: {listed} agents listed after {took:?}"));
    if let Some(report) = report {
        report.mesh("connect_per_sec", listed as f64 / took.as_secs_f64());
    }
    Ok(())
}
