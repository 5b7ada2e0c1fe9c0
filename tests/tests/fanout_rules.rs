//! Fan-out rules beyond the basics in fanout.rs: a label-scoped token's labels narrow an
//! ids-only selector, ids ∩ labels, the defaults (`max_concurrency` 50, `max_errors` absent =
//! no limit, 0 ≡ 1), offline targets and the skipped record's status and error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{HubOptions, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::fleet::{fleet, fleet_with, poll};
use agentmesh_e2e::{eventually, http, TestHub, PATIENCE};
use backend_agent::auth::token_sha256_hex;
use serde_json::{json, Value};

async fn post_job(hub: &TestHub, token: &str, body: Value) -> http::Response {
    http::request(
        hub.http,
        "POST",
        "/api/v1/commands",
        Some(token),
        Some(&body.to_string()),
    )
    .await
}

/// Submits a job and polls it until nothing is pending.
async fn job(hub: &TestHub, body: Value) -> Value {
    let r = post_job(hub, OPERATOR_TOKEN, body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let job_id = r.json()["job_id"].as_str().unwrap().to_owned();
    poll(hub, &job_id, |v| v["summary"]["pending"] == 0).await
}

fn agents_of(job: &Value) -> Vec<String> {
    let mut v: Vec<String> = job["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// Commands the history holds for `agent`.
async fn commands_on(hub: &TestHub, agent: &str) -> usize {
    let r = http::get(
        hub.http,
        &format!("/api/v1/commands?agent={agent}&limit=100"),
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["count"].as_u64().unwrap() as usize
}

#[tokio::test]
async fn a_label_scoped_token_with_an_ids_only_selector_reaches_only_its_labels() {
    let extra = format!(
        "[[tokens]]\nname = \"ops-panel\"\nsha256 = \"{}\"\nrole = \"operator\"\nlabels = {{ role = \"panel\" }}\n",
        token_sha256_hex("amt_ops_panel")
    );
    let options = HubOptions {
        extra,
        ..HubOptions::default()
    };
    let f = fleet_with(&[("panel-01", "panel"), ("web-01", "web")], options).await;
    let r = post_job(
        &f.hub,
        "amt_ops_panel",
        json!({"selector": {"ids": ["panel-01", "web-01"]}, "verb": "ping"}),
    )
    .await;
    // Narrowed to the token's labels (202 with panel-01 only), or refused outright (403):
    // either way web-01, outside the token's scope, must not be a target.
    match r.status {
        202 => {
            let v = r.json();
            assert_eq!(v["targets"], json!(["panel-01"]), "{v}");
            let job_id = v["job_id"].as_str().unwrap().to_owned();
            let done = poll(&f.hub, &job_id, |v| v["summary"]["pending"] == 0).await;
            assert_eq!(agents_of(&done), ["panel-01"], "{done}");
            assert_eq!(done["summary"]["ok"], 1, "{done}");
        }
        403 => {}
        other => panic!("unexpected {other}: {}", r.body),
    }
    assert_eq!(commands_on(&f.hub, "web-01").await, 0, "web-01 was reached");
}

#[tokio::test]
async fn ids_and_labels_together_select_their_intersection() {
    let f = fleet(&[("db-01", "db"), ("web-01", "web"), ("web-02", "web")]).await;
    let j = job(
        &f.hub,
        json!({"selector": {"ids": ["db-01", "web-01"], "labels": {"role": "web"}}, "verb": "ping"}),
    )
    .await;
    assert_eq!(agents_of(&j), ["web-01"], "{j}");
    assert_eq!(j["summary"]["ok"], 1, "{j}");
}

#[tokio::test]
async fn fan_out_defaults_and_max_errors_zero_means_one() {
    let f = fleet(&[("web-01", "web"), ("web-02", "web"), ("web-03", "web")]).await;
    // Absent: max_concurrency 50, no error limit (every failing target runs).
    let j = job(
        &f.hub,
        json!({"selector": {"labels": {"role": "web"}}, "verb": "fail"}),
    )
    .await;
    assert_eq!(j["max_concurrency"], 50, "{j}");
    assert!(j["max_errors"].is_null(), "{j}");
    assert_eq!(j["summary"]["failed"], 3, "{j}");
    assert_eq!(j["summary"]["skipped"], 0, "{j}");
    // max_errors 0 behaves as 1: one failure, then the rest are skipped.
    let j = job(
        &f.hub,
        json!({"selector": {"labels": {"role": "web"}}, "verb": "fail", "max_concurrency": 1, "max_errors": 0}),
    )
    .await;
    assert_eq!(j["summary"]["failed"], 1, "{j}");
    assert_eq!(j["summary"]["skipped"], 2, "{j}");
    // The skipped records: status cancelled, error code "skipped", never dispatched.
    let skipped: Vec<&Value> = j["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["error"]["code"] == "skipped")
        .collect();
    assert_eq!(skipped.len(), 2, "{j}");
    for r in skipped {
        assert_eq!(r["status"], "cancelled", "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_errors"),
            "{r}"
        );
        assert!(r["started_at"].is_null(), "{r}");
    }
}

#[tokio::test]
async fn an_offline_target_is_recorded_as_rejected_and_the_others_still_run() {
    let mut f = fleet(&[("web-01", "web"), ("web-02", "web")]).await;
    f.agents.pop().unwrap().stop().await;
    eventually("web-02 offline", PATIENCE, || async {
        !f.hub.is_connected("web-02")
    })
    .await;
    let j = job(
        &f.hub,
        json!({"selector": {"ids": ["web-01", "web-02"]}, "verb": "ping"}),
    )
    .await;
    assert_eq!(j["summary"]["ok"], 1, "{j}");
    assert_eq!(j["summary"]["failed"], 1, "{j}");
    let offline = j["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["agent_id"] == "web-02")
        .unwrap();
    assert_eq!(offline["status"], "rejected", "{offline}");
    assert_eq!(offline["error"]["code"], "agent_offline", "{offline}");
}
