//! Phase 7, restart: `backend_restart_ms`, `reconnect_all_ms`, `reconnect_p99_ms`,
//! `reconnect_max_over_mean`.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::fleet_patience;
use crate::mesh::Mesh;
use crate::report::Report;
use crate::swarm::Swarms;
use crate::sys::{quantile, unix_ms};

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
    crate::sys::progress("restart: backend up");
    mesh.wait_connected(total, fleet_patience(n)).await?;
    report.mesh("reconnect_all_ms", killed.elapsed().as_secs_f64() * 1000.0);
    crate::sys::progress("restart: all agents connected");
    let (times, missing) = swarms.reconnected(Duration::from_secs(30)).await?;
    if missing > 0 {
        crate::sys::progress(&format!(
            "restart: {missing} agents did not report a new session"
        ));
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
