//! Smoke run of `bench --replicas 3` (issue 10): 30 agents over three backend replicas on a
//! real PostgreSQL and a real nats-server, 1 s phases, every `cluster.*` key present and
//! positive. Never a threshold: the numbers go to `docs/scaling.md`, not into tests. Skips
//! (saying why) without PostgreSQL or nats-server, panics then under
//! `AGENTMESH_REQUIRE_EXTERNAL=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::bench::{assert_positive, run_bench};

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

#[test]
fn replicas_smoke_run_writes_every_cluster_key_positive() {
    if agentmesh_e2e::postgres::bin_dir().is_none() || agentmesh_e2e::nats::binary().is_none() {
        return;
    }
    let v = run_bench(&["--agents", "30", "--replicas", "3", "--duration", "1"]);
    assert_positive(&v, "cluster", CLUSTER);
    assert_eq!(v["cluster"]["replicas"], 3.0, "{v:#}");
    assert_eq!(v["meta"]["agents"], 30, "{v:#}");
}
