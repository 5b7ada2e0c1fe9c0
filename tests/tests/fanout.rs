//! Fan-out jobs: label selection, max_concurrency and max_errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::fleet::{fan_out, fleet};
use serde_json::json;

fn ms(rfc3339: &str) -> i128 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    t.unix_timestamp_nanos() / 1_000_000
}

#[tokio::test]
async fn fan_out_reaches_exactly_the_label_and_honours_concurrency_and_errors() {
    let f = fleet(&[
        ("db-01", "db"),
        ("web-01", "web"),
        ("web-02", "web"),
        ("web-03", "web"),
    ])
    .await;
    let j = fan_out(&f.hub, json!({"selector": {"labels": {"role": "web"}}, "verb": "sleep", "args": {"secs": "0.4"}, "max_concurrency": 1})).await;
    assert_eq!(j["summary"]["targets"], 3, "{j}");
    assert_eq!(j["summary"]["ok"], 3, "{j}");
    let mut agents: Vec<&str> = j["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    agents.sort();
    assert_eq!(agents, ["web-01", "web-02", "web-03"]);
    // max_concurrency 1: no two executions overlap.
    let mut spans: Vec<(i128, i128)> = j["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let start = ms(r["started_at"].as_str().unwrap());
            (start, start + r["duration_ms"].as_u64().unwrap() as i128)
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "overlapping executions: {spans:?}");
    }

    let j = fan_out(&f.hub, json!({"selector": {"labels": {"role": "web"}}, "verb": "fail", "max_concurrency": 1, "max_errors": 2})).await;
    assert_eq!(j["summary"]["failed"], 2, "{j}");
    assert_eq!(j["summary"]["skipped"], 1, "{j}");
    assert_eq!(j["summary"]["ok"], 0, "{j}");

    let j = fan_out(
        &f.hub,
        json!({"selector": {"ids": ["db-01", "web-01"]}, "verb": "ping"}),
    )
    .await;
    assert_eq!(j["summary"]["ok"], 2, "{j}");
}
