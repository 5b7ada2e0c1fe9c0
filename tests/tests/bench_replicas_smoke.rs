//! Smoke run of `bench --replicas 3` (issue 10): 30 agents over three backend replicas on a
//! real PostgreSQL and a real nats-server, 1 s phases, every `cluster.*` key present and
//! positive. Never a threshold: the numbers go to `docs/scaling.md`, not into tests. Skips
//! (saying why) without PostgreSQL or nats-server, panics then under
//! `AGENTMESH_REQUIRE_EXTERNAL=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const CLUSTER: &[&str] = &[
    "replicas",
    "connect_per_sec",
    "cpu_us_per_connect",
    "idle_bytes_per_agent",
    "agents_per_replica_max",
    "same_replica_rtt_p50_us",
    "cross_replica_rtt_p50_us",
    "commands_per_sec",
    "cpu_us_per_command",
    "pg_write_xacts_per_command",
    "pg_wal_bytes_per_command",
    "failover_agents",
    "failover_ms",
    "failover_listed_ms",
];

/// Builds `bench`, `backend-agent` and `gateway-agent` into this test's target directory and
/// profile (the benchmark finds the daemons next to itself); returns the `bench` path.
fn bench_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test> -> <target>/<profile>
    let dir = exe.parent().unwrap().parent().unwrap();
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut build = Command::new(cargo);
    build
        .args(["build", "--locked", "--bins"])
        .args(["-p", "agentmesh-bench", "-p", "backend-agent"])
        .args(["-p", "gateway-agent"])
        .arg("--target-dir")
        .arg(dir.parent().unwrap())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "building the benchmark failed"
    );
    dir.join("bench")
}

#[test]
fn replicas_smoke_run_writes_every_cluster_key_positive() {
    if agentmesh_e2e::postgres::bin_dir().is_none() || agentmesh_e2e::nats::binary().is_none() {
        return;
    }
    let bench = bench_binary();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("bench.json");
    let mut child = Command::new(&bench)
        .args([
            "--agents",
            "30",
            "--replicas",
            "3",
            "--duration",
            "1",
            "--json",
        ])
        .arg(&out)
        .spawn()
        .unwrap();
    // A hung benchmark fails here instead of hanging CI (a bound on completion, not on speed).
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench --replicas did not finish within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "bench --replicas exited with {status}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in CLUSTER {
        let x = v["cluster"][key].as_f64();
        assert!(
            x.is_some_and(|x| x > 0.0 && x.is_finite()),
            "cluster.{key} missing or not positive: {:?}\n{v:#}",
            v["cluster"][key]
        );
    }
    assert_eq!(v["cluster"]["replicas"], 3.0, "{v:#}");
    assert_eq!(v["meta"]["agents"], 30, "{v:#}");
}
