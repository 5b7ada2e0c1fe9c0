//! What the PostgreSQL store keeps per replica for "Audit across replicas" (docs/cluster.md):
//! checkpoints keyed by replica (one replica's never stands in for another's, each bounded on
//! its own) and the mirrored audit records (`audit_records`): a retried batch is harmless, the
//! highest mirrored seq is per replica, and the fleet listing filters and pages by cursor.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_audit::{AuditRecord, Checkpoint};
use agentmesh_e2e::postgres::TestPostgres;
use backend_agent::config::DatabaseUrl;
use backend_agent::store::audit_mirror::FleetAuditFilter;
use backend_agent::store::{AuditMirrorStore, CheckpointStore, PostgresStore, CHECKPOINTS_KEPT};
use serde_json::json;

fn open(url: &str) -> PostgresStore {
    PostgresStore::open(&DatabaseUrl::new(url), 2).expect("open the PostgreSQL store")
}

fn checkpoint(seq: u64) -> Checkpoint {
    Checkpoint {
        seq,
        hash: format!("{seq:064x}"),
        ts: "2026-01-01T00:00:00.000Z".into(),
        file: "audit.log".into(),
        public_key: "pk".into(),
        key_pin: "pin".into(),
        signature: "sig".into(),
    }
}

fn record(seq: u64, agent: &str) -> AuditRecord {
    AuditRecord {
        seq,
        ts: format!("2026-01-01T00:00:{:02}.000Z", seq % 60),
        kind: "command_requested".into(),
        actor: Some("ops".into()),
        agent_id: Some(agent.into()),
        command_id: Some(format!("c{seq}")),
        details: json!({"verb": "echo"}),
        prev: "0".repeat(64),
        hash: format!("{seq:064x}"),
    }
}

#[test]
fn checkpoints_and_mirrored_records_are_kept_per_replica() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let url = pg.create_database();
    let (a, b) = (open(&url), open(&url));
    let last = CHECKPOINTS_KEPT as u64 + 3;
    for seq in 1..=last {
        a.put_replica_checkpoint("r0", &checkpoint(seq)).unwrap();
    }
    b.put_replica_checkpoint("r1", &checkpoint(7)).unwrap();
    a.put_replica_checkpoint("r0", &checkpoint(500)).unwrap();
    assert_eq!(
        b.latest_replica_checkpoint("r1").unwrap(),
        Some(checkpoint(7))
    );
    assert_eq!(
        b.latest_replica_checkpoint("r0").unwrap(),
        Some(checkpoint(500))
    );
    assert_eq!(a.latest_checkpoint().unwrap(), None, "no single-node rows");
    assert_eq!(
        a.latest_checkpoints().unwrap(),
        vec![("r0".into(), checkpoint(500)), ("r1".into(), checkpoint(7))]
    );
    let per_replica = TestPostgres::query_strings(
        &url,
        "SELECT COUNT(*) FROM audit_checkpoints WHERE replica_id = 'r0'",
    );
    assert_eq!(per_replica, [Some(CHECKPOINTS_KEPT.to_string())]);

    assert!(a.mirrors_audit());
    assert_eq!(a.mirrored_upto("r0").unwrap(), 0);
    let batch: Vec<_> = (1..=5).map(|s| record(s, "web-1")).collect();
    a.mirror_audit("r0", &batch).unwrap();
    a.mirror_audit("r0", &batch).unwrap(); // a retry after an unknown outcome
    b.mirror_audit("r1", &[record(1, "db-1"), record(2, "web-1")])
        .unwrap();
    assert_eq!(a.mirrored_upto("r0").unwrap(), 5);
    assert_eq!(b.mirrored_upto("r1").unwrap(), 2);
    let all = b
        .fleet_audit(&FleetAuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 7, "duplicates skipped");
    assert_eq!(all[0].record, record(1, "web-1"), "stored as written");
    let web: Vec<_> = b
        .fleet_audit(&FleetAuditFilter {
            agent: Some("web-1".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| (r.replica, r.record.seq))
        .collect();
    assert_eq!(web.len(), 6);
    assert!(web.contains(&("r1".into(), 2)));
    let page = b
        .fleet_audit(&FleetAuditFilter {
            limit: 3,
            ..Default::default()
        })
        .unwrap();
    let rest = b
        .fleet_audit(&FleetAuditFilter {
            after_id: page[2].id,
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        page.len() + rest.len(),
        7,
        "the cursor pages without overlap"
    );
    let since = b
        .fleet_audit(&FleetAuditFilter {
            since_ts: Some("2026-01-01T00:00:04Z".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(since.len(), 2, "seq 4 and 5 of r0");
}
