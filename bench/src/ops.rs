//! `ops-bench`: what operating a large fleet costs the backend's operations paths.
//!
//! - `/metrics` rendering (`Metrics::render_with`) with one certificate-expiry series per
//!   agent and `(verb, status)` series: render time quantiles and body size.
//! - `backend-agent backup` (`backup::backup_files`) of a SQLite store holding N finished
//!   commands plus an audit log of N records: duration, once idle and once while a writer
//!   keeps inserting commands (how many it inserted during the backup shows writers are not
//!   blocked).
//!
//! ```sh
//! cargo build --release -p agentmesh-bench
//! ./target/release/ops-bench --agents 10000 --commands 20000
//! ```
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use agentmesh_audit::{AuditEvent, AuditLog, AuditOptions};
use agentmesh_bench::quantile;
use anyhow::{bail, Context, Result};
use backend_agent::metrics::{Metrics, Scrape};
use backend_agent::store::{CommandRecord, CommandState, Store};

fn record(i: u64) -> CommandRecord {
    CommandRecord {
        command_id: format!("cmd-{i:012}"),
        agent_id: format!("edge-{:05}", i % 1000),
        verb: "echo".into(),
        args: serde_json::json!({"message": "benchmark"}),
        requested_by: "bench".into(),
        status: CommandState::Ok,
        exit_code: Some(0),
        stdout: "x".repeat(200),
        stderr: String::new(),
        truncated: false,
        created_at: "2026-01-01T00:00:00Z".into(),
        started_at: Some("2026-01-01T00:00:00Z".into()),
        finished_at: Some("2026-01-01T00:00:01Z".into()),
        duration_ms: Some(5),
        error: None,
        timeout_ms: 30_000,
        job_id: None,
    }
}

fn metrics_render(agents: usize) -> serde_json::Value {
    let ca = mesh_certs::Ca::generate("bench CA").unwrap();
    let cert = ca
        .issue_agent("edge-00000", mesh_certs::Validity::days(30))
        .unwrap();
    let m = Metrics::default();
    for i in 0..agents {
        m.agent_certificate_pem(&format!("edge-{i:05}"), &cert.cert_pem);
    }
    for v in 0..200 {
        for status in ["ok", "failed", "timeout"] {
            m.command_finished(&format!("verb_{v}"), status, None);
        }
    }
    let scrape = Scrape {
        connected: agents,
        audit_writable: true,
        ..Scrape::default()
    };
    let mut samples = Vec::new();
    let mut bytes = 0;
    for _ in 0..20 {
        let t = Instant::now();
        bytes = m.render_with(&scrape).len();
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    serde_json::json!({
        "agents": agents,
        "verb_series": 600,
        "render_ms_p50": quantile(&samples, 0.5),
        "render_ms_max": quantile(&samples, 1.0),
        "body_bytes": bytes,
    })
}

async fn backup(commands: u64) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let store_path = dir.path().join("backend.db");
    let store = Store::open_sqlite(store_path.clone()).await?;
    for i in 0..commands {
        store.insert_command(&record(i)).await?;
    }
    let audit_path = dir.path().join("audit.log");
    let (log, _) = AuditLog::open(&audit_path, AuditOptions::default())?;
    for i in 0..commands {
        log.append(AuditEvent::new("command_requested").command(format!("cmd-{i}")))?;
    }
    log.flush().await?;
    let config = dir.path().join("backend.toml");
    std::fs::write(&config, "# bench\n")?;

    let timed = |out: std::path::PathBuf| {
        let (s, a, c) = (store_path.clone(), audit_path.clone(), config.clone());
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let report = backend_agent::backup::backup_files(&s, &a, &c, &out)?;
            Ok::<_, backend_agent::backup::BackupError>((t.elapsed().as_secs_f64() * 1e3, report))
        })
    };
    let (idle_ms, report) = timed(dir.path().join("b-idle")).await??;
    let store_bytes = report.manifest.files[0].bytes;

    // Again while a writer inserts commands as fast as it can.
    let running = Arc::new(AtomicBool::new(true));
    let inserted = Arc::new(AtomicU64::new(0));
    let (r, n, st) = (running.clone(), inserted.clone(), store.clone());
    let writer = tokio::spawn(async move {
        let mut i = commands;
        while r.load(Ordering::Relaxed) {
            st.insert_command(&record(i)).await.unwrap();
            i += 1;
            n.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (busy_ms, _) = timed(dir.path().join("b-busy")).await??;
    let during = inserted.load(Ordering::Relaxed);
    running.store(false, Ordering::Relaxed);
    writer.await?;
    log.close().await?;
    Ok(serde_json::json!({
        "commands": commands,
        "audit_records": commands,
        "store_bytes": store_bytes,
        "backup_idle_ms": idle_ms,
        "backup_under_writes_ms": busy_ms,
        "commands_inserted_during_backup": during,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let (mut agents, mut commands) = (10_000usize, 20_000u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => agents = value.parse()?,
            "--commands" => commands = value.parse()?,
            other => bail!("unknown flag {other} (known: --agents, --commands)"),
        }
    }
    let out = serde_json::json!({
        "metrics": metrics_render(agents),
        "backup": backup(commands).await?,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
