//! CI smoke run of the `bench` binary: 50 agents, 1 s phases, every JSON key present and
//! positive. Never a threshold: speed claims live in `bench/` and the README, not in tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const RAW: &[&str] = &[
    "handshakes_per_sec",
    "idle_bytes_per_conn",
    "echo_p50_us",
    "echo_p99_us",
    "pipelined_msgs_per_sec",
    "fsync_p50_us",
    "e2e_p50_us",
    "e2e_commands_per_sec",
];
const MESH: &[&str] = &[
    "connect_per_sec",
    "idle_bytes_per_agent",
    "gateway_idle_rss_kib",
    "rtt_p50_us",
    "rtt_p99_us",
    "rtt_loaded_idle_p99_us",
    "commands_per_sec",
    "rtt_loaded_p99_us",
    "fanout_ms",
    "reconnect_all_ms",
    "reconnect_p99_ms",
    "reconnect_max_over_mean",
];
const RATIOS: &[&str] = &[
    "connect_vs_raw",
    "idle_vs_raw",
    "rtt_vs_floor",
    "throughput_vs_raw",
    "fanout_vs_throughput",
    "reconnect_vs_raw",
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
        .args([
            "-p",
            "agentmesh-bench",
            "-p",
            "backend-agent",
            "-p",
            "gateway-agent",
        ])
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
fn smoke_run_writes_every_key_positive() {
    let bench = bench_binary();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("bench.json");
    let mut child = Command::new(&bench)
        .args(["--agents", "50", "--duration", "1", "--json"])
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
            panic!("bench did not finish within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "bench exited with {status}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for (section, keys) in [("raw", RAW), ("mesh", MESH), ("ratios", RATIOS)] {
        for key in keys {
            let x = v[section][key].as_f64();
            assert!(
                x.is_some_and(|x| x > 0.0 && x.is_finite()),
                "{section}.{key} missing or not positive: {:?}\n{v:#}",
                v[section][key]
            );
        }
    }
    let meta = &v["meta"];
    assert_eq!(meta["agents"], 50, "{meta}");
    for key in ["cores", "fd_limit"] {
        assert!(
            meta["machine"][key].as_u64().is_some_and(|x| x > 0),
            "meta.machine.{key}: {meta}"
        );
    }
    assert!(
        meta["machine"]["kernel"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "meta.machine.kernel: {meta}"
    );
    for key in ["date", "command_line"] {
        assert!(
            meta[key].as_str().is_some_and(|s| !s.is_empty()),
            "meta.{key}: {meta}"
        );
    }
}
