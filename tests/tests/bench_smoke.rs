//! CI smoke run of the `bench` binary: 50 agents, 1 s phases, every JSON key present and
//! positive. Never a threshold: speed claims live in `bench/` and the README, not in tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::bench::{assert_positive, run_bench};

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

#[test]
fn smoke_run_writes_every_key_positive() {
    let v = run_bench(&["--agents", "50", "--duration", "1"]);
    for (section, keys) in [("raw", RAW), ("mesh", MESH), ("ratios", RATIOS)] {
        assert_positive(&v, section, keys);
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
