//! Phase 1, the floor: a minimal tokio-rustls + tokio-tungstenite mTLS server (a child
//! process, see [`server`]) and clients with the same certificates, measured before the mesh.

pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use mesh_certs::Issued;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::procs::LineChild;
use crate::report::Report;
use crate::sys::{quantile, rss_kib};

/// Connections dialled at once in the handshake and idle measurements.
pub const DIAL_CONCURRENCY: usize = 64;
/// HTTP clients at once in the e2e throughput measurement (as the mesh's phase 5).
pub const CLIENTS: usize = 64;
/// Frames in flight in the pipelined measurement.
const PIPELINE_WINDOW: usize = 1024;

/// Runs every raw measurement; `conns` idle connections, `share` seconds per timed part.
pub async fn run(
    report: &mut Report,
    pki_dir: &Path,
    identity: &Issued,
    conns: usize,
    share: Duration,
) -> Result<()> {
    let mut server = LineChild::spawn_self(&["raw-server", &pki_dir.display().to_string()])?;
    let ready = server.recv(Duration::from_secs(30)).await?;
    let (echo, agent, http) = server::parse_ready(&ready).context("raw server ready line")?;
    let config = tls::client_config(identity)?;

    // Idle memory first, on a fresh process (as the backend's is measured before its storm):
    // memory freed by earlier work would be reused and hide the cost of a connection.
    let idle = idle_bytes(echo, &config, conns, server.pid()).await?;
    report.raw("idle_bytes_per_conn", idle);
    let hs = handshakes(echo, &config, share).await?;
    report.raw("handshakes_per_sec", hs);
    crate::sys::progress(&format!(
        "raw: {hs:.0} handshakes/s, {idle:.0} bytes per idle connection"
    ));
    let (p50, p99) = echo_latency(echo, &config, share).await?;
    report.raw("echo_p50_us", p50);
    report.raw("echo_p99_us", p99);
    report.raw(
        "pipelined_msgs_per_sec",
        pipelined(echo, &config, share).await?,
    );
    report.raw("fsync_p50_us", fsync_p50(pki_dir, share)?);

    let ws = tls::dial(agent, &config).await?;
    let agent_task = tokio::spawn(server::echo_agent(ws));
    let (e2e_p50, e2e_rate) = e2e(http, share).await?;
    report.raw("e2e_p50_us", e2e_p50);
    report.raw("e2e_commands_per_sec", e2e_rate);
    agent_task.abort();
    server.close(Duration::from_secs(5)).await;
    Ok(())
}

async fn handshakes(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    share: Duration,
) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop = started + share;
    let mut workers = Vec::new();
    for _ in 0..DIAL_CONCURRENCY {
        let (config, done) = (config.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < stop {
                tls::dial(addr, &config).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn idle_bytes(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    conns: usize,
    server_pid: u32,
) -> Result<f64> {
    settle().await;
    let before = rss_kib(server_pid).context("raw server RSS")?;
    let permits = Arc::new(Semaphore::new(DIAL_CONCURRENCY));
    let mut dials = Vec::with_capacity(conns);
    for _ in 0..conns {
        let permit = permits.clone().acquire_owned().await?;
        let config = config.clone();
        dials.push(tokio::spawn(async move {
            let ws = tls::dial(addr, &config).await;
            drop(permit);
            ws
        }));
    }
    let mut held = Vec::with_capacity(conns);
    for d in dials {
        held.push(d.await??);
    }
    settle().await;
    let after = rss_kib(server_pid).context("raw server RSS")?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 * 1024.0 / conns.max(1) as f64)
}

/// Lets a process finish what it was doing before its RSS is read (a benchmark pause, not
/// synchronisation: nothing depends on it but the figure's noise).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn echo_latency(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    share: Duration,
) -> Result<(f64, f64)> {
    let mut ws = tls::dial(addr, config).await?;
    let frame = "x".repeat(200);
    let mut samples = Vec::new();
    let stop = Instant::now() + share;
    while Instant::now() < stop {
        let t = Instant::now();
        ws.send(Message::text(frame.clone())).await?;
        match ws.next().await {
            Some(Ok(Message::Text(_))) => samples.push(t.elapsed().as_secs_f64() * 1e6),
            other => bail!("echo: unexpected {other:?}"),
        }
    }
    Ok((quantile(&mut samples, 0.5), quantile(&mut samples, 0.99)))
}

async fn pipelined(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    share: Duration,
) -> Result<f64> {
    let (mut sink, mut stream) = tls::dial(addr, config).await?.split();
    let window = Arc::new(Semaphore::new(PIPELINE_WINDOW));
    let started = Instant::now();
    let stop = started + share;
    let writer_window = window.clone();
    let writer = tokio::spawn(async move {
        let frame = "x".repeat(200);
        while Instant::now() < stop {
            writer_window.acquire().await?.forget();
            sink.send(Message::text(frame.clone())).await?;
        }
        Ok::<_, anyhow::Error>(sink)
    });
    let mut received = 0u64;
    while Instant::now() < stop {
        match tokio::time::timeout_at(stop.into(), stream.next()).await {
            Ok(Some(Ok(_))) => {
                received += 1;
                window.add_permits(1);
            }
            Ok(other) => bail!("pipelined: unexpected {other:?}"),
            Err(_) => break,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    window.add_permits(PIPELINE_WINDOW);
    drop(writer.await??);
    Ok(received as f64 / elapsed)
}

/// 300-byte appends, each followed by fdatasync, in `dir`'s filesystem (the state dir's).
fn fsync_p50(dir: &Path, share: Duration) -> Result<f64> {
    use std::io::Write as _;
    let path = dir.join("fsync-probe.log");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let record = [b'x'; 300];
    let mut samples = Vec::new();
    let stop = Instant::now() + share.min(Duration::from_secs(3));
    while Instant::now() < stop || samples.len() < 20 {
        let t = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(quantile(&mut samples, 0.5))
}

/// HTTP → WebSocket → echo agent → HTTP: sequential p50, then [`CLIENTS`] keep-alive clients.
async fn e2e(http: SocketAddr, share: Duration) -> Result<(f64, f64)> {
    let body = r#"{"verb":"ping","wait":true}"#;
    let mut client = Client::connect(http, None).await?;
    let mut samples = Vec::new();
    let stop = Instant::now() + share;
    while Instant::now() < stop {
        let t = Instant::now();
        let (status, v) = client.call("POST", "/cmd", Some(body)).await?;
        if status != 200 || v["status"] != "ok" {
            bail!("raw e2e: {status} {v}");
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let p50 = quantile(&mut samples, 0.5);
    let rate = concurrent(http, None, "/cmd", body.to_owned(), share * 2)
        .await?
        .0;
    Ok((p50, rate))
}

/// [`CLIENTS`] keep-alive clients POSTing `body` to `path` for `length`: (completed with
/// status 200 and `"status":"ok"` per second, p99 µs of those).
pub async fn concurrent(
    http: SocketAddr,
    token: Option<&str>,
    path: &str,
    body: String,
    length: Duration,
) -> Result<(f64, f64)> {
    let started = Instant::now();
    let stop = started + length;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = Client::connect(http, token).await?;
        let (path, body) = (path.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let (status, v) = client.call("POST", &path, Some(&body)).await?;
                if (status == 200 || status == 201) && v["status"] == "ok" {
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((all.len() as f64 / elapsed, quantile(&mut all, 0.99)))
}
