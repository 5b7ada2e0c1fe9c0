//! Phase 3, idle memory: `idle_bytes_per_agent`, `gateway_idle_rss_kib`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Client;
use crate::mesh::{Mesh, GATEWAY, TOKEN};
use crate::procs::{sibling, spawn_daemon};
use crate::raw::settle;
use crate::report::Report;
use crate::sys::rss_kib;

/// Phase 3: backend RSS delta per agent, and one real `gateway-agent` process's RSS.
pub async fn idle(
    mesh: &Mesh,
    n: usize,
    rss_before: u64,
    cert_dir: &Path,
    share: Duration,
    report: &mut Report,
) -> Result<()> {
    settle().await;
    let after = rss_kib(mesh.pid()).context("backend RSS")?;
    report.mesh(
        "idle_bytes_per_agent",
        after.saturating_sub(rss_before) as f64 * 1024.0 / n.max(1) as f64,
    );
    let binary = sibling("gateway-agent")?;
    let config = mesh.agent_config(GATEWAY, cert_dir, "gateway", "")?;
    let log = mesh.pki.path().join("gateway-agent.log");
    let mut gateway = spawn_daemon(&binary, &config, &log)?;
    let mut api = Client::connect(mesh.http, Some(TOKEN)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, v) = api
            .call("GET", &format!("/api/v1/agents/{GATEWAY}"), None)
            .await?;
        if status == 200 && v["connected"] == true {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway-agent process never connected (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Connected and idle for a while (at least a second, a fifth of a phase).
    tokio::time::sleep(share.max(Duration::from_secs(5)) / 5).await;
    let pid = gateway.id().context("gateway pid")?;
    report.mesh(
        "gateway_idle_rss_kib",
        rss_kib(pid).context("gateway RSS")? as f64,
    );
    gateway.start_kill()?;
    gateway.wait().await?;
    Ok(())
}
