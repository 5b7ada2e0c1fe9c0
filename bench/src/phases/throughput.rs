//! Phase 5, throughput: `commands_per_sec`, `rtt_loaded_p99_us`.

use std::time::Duration;

use anyhow::Result;

use crate::mesh::{Mesh, PROBE, TOKEN};
use crate::raw::concurrent;
use crate::report::Report;

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
