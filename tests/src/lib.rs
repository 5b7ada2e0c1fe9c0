//! End-to-end test harness: real certificates from `mesh_certs`, a real backend and real
//! gateway agents in-process on ephemeral ports, real TLS between them, and raw clients for
//! the misbehaving peers a test needs to play.
//!
//! # Layout
//! - [`pki`]: a per-test CA, server and agent certificates on disk.
//! - [`backend`]: [`TestHub`], a backend started from a real `backend.toml`.
//! - [`fleet`]: a backend with connected agents and command API helpers.
//! - [`agent`]: [`TestAgent`], a gateway agent started from a real `gateway.toml`.
//! - [`raw`]: a hand-driven TLS WebSocket client for protocol-level tests.
//! - [`http`]: a tiny HTTP/1.1 client with deadlines on every exchange.
//! - [`meshctl`]: the `meshctl` binary as a child process, and a fleet for its tests.
//! - [`browser`]: headless Chromium over the DevTools protocol (the `/ui/` page test).
//! - [`sse`]: a Server-Sent Events client for `GET /api/v1/events`.
//! - [`process`]: the real binaries as child processes (killed on drop; kill -9 for crashes).
//! - [`nats`]: a real nats-server on an ephemeral port, for `[cluster]` replicas.
//! - [`nginx`]: real nginx with the shipped config, and relays that give each client its own
//!   loopback address.
//! - [`postgres`]: a real PostgreSQL server in a temp dir, a fresh database per use.
//! - [`cluster`]: PostgreSQL + nats-server + N backend replicas (in-process or processes).
//! - [`bench`]: the `bench` binary for the smoke tests.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, missing_docs)]

pub mod agent;
pub mod backend;
pub mod bench;
pub mod browser;
pub mod cluster;
pub mod fleet;
pub mod http;
pub mod meshctl;
pub mod nats;
pub mod nginx;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod raw;
pub mod sse;

use std::future::Future;
use std::time::{Duration, Instant};

pub use agent::TestAgent;
pub use backend::TestHub;
pub use pki::Pki;

/// Polls `cond` until it holds or `limit` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generous limit for conditions on a slow, shared CI machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// `found` (an external tool the test needs), or `None` with `why` printed so the test skips;
/// under `AGENTMESH_REQUIRE_EXTERNAL=1` (CI) a missing tool panics instead, so nothing skips.
pub fn external<T>(found: Option<T>, what: &str, why: &str) -> Option<T> {
    if found.is_none() {
        let required = std::env::var("AGENTMESH_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{what} is not installed and AGENTMESH_REQUIRE_EXTERNAL=1"
        );
        eprintln!("{what} not installed: {why}");
    }
    found
}

/// The first of `candidates` that exists, through [`external`].
pub fn external_binary(candidates: &[&str], what: &str, why: &str) -> Option<std::path::PathBuf> {
    let found = candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    external(found, what, why)
}

/// Logs to the test's captured output (once per process).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}
