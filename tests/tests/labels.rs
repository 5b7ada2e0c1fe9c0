//! Issue 7, "Authoritative labels" set by an admin: through `PUT /api/v1/agents/{id}/labels`
//! or at enrolment (`POST /api/v1/enrollments {.., labels}`), they are what scopes and
//! selectors match, whatever the agent claims in `hello`, and they survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{HubOptions, ADMIN_TOKEN, OPERATOR_TOKEN};
use agentmesh_e2e::{eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use backend_agent::auth::token_sha256_hex;
use serde_json::{json, Value};

/// Operator scoped to `region=eu` (every verb).
const EU_OPS: &str = "amt_test_eu_ops";

async fn call(
    hub: &TestHub,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> http::Response {
    let body = body.map(|b| b.to_string());
    http::request(hub.http, method, path, Some(token), body.as_deref()).await
}

fn eu_ops_token() -> String {
    format!(
        "\n[[tokens]]\nname = \"eu-ops\"\nsha256 = \"{}\"\nrole = \"operator\"\nlabels = {{ region = \"eu\" }}\n",
        token_sha256_hex(EU_OPS)
    )
}

#[tokio::test]
async fn labels_set_by_an_admin_are_authoritative_and_survive_a_restart() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let options = HubOptions {
        extra: eu_ops_token(),
        ..HubOptions::default()
    };
    let mut hub = TestHub::start_with(&pki, &[("edge-01", &edge.pin)], options).await;
    let agent = TestAgent::connect(&pki, &hub, "edge-01", &edge_dir).await;
    let fan_out = json!({"selector": {"labels": {}}, "verb": "ping"});

    // Without enrolment labels, what the agent claims (region=eu) is all there is.
    let r = call(
        &hub,
        "POST",
        "/api/v1/commands",
        EU_OPS,
        Some(fan_out.clone()),
    )
    .await;
    assert_eq!(r.json()["targets"], json!(["edge-01"]), "{}", r.body);

    let path = "/api/v1/agents/edge-01/labels";
    let body = json!({"labels": {"region": "us"}});
    let r = call(&hub, "PUT", path, OPERATOR_TOKEN, Some(body.clone())).await;
    assert_eq!(r.status, 403, "operators may not relabel: {}", r.body);
    let r = call(&hub, "PUT", path, ADMIN_TOKEN, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["authoritative_labels"], json!({"region": "us"}));

    for round in ["now", "after a restart"] {
        let r = call(
            &hub,
            "POST",
            "/api/v1/commands",
            EU_OPS,
            Some(fan_out.clone()),
        )
        .await;
        assert_eq!(r.status, 422, "{round}: {}", r.body);
        let r = call(
            &hub,
            "POST",
            "/api/v1/agents/edge-01/commands",
            EU_OPS,
            Some(json!({"verb": "ping"})),
        )
        .await;
        assert_eq!(r.status, 403, "{round}: {}", r.body);
        hub.restart(&pki).await;
        eventually("agent back", PATIENCE, || async {
            hub.is_connected("edge-01")
        })
        .await;
    }
    let audit = call(
        &hub,
        "GET",
        "/api/v1/audit?kind=labels_set",
        ADMIN_TOKEN,
        None,
    )
    .await;
    let records = audit.json()["records"].as_array().unwrap().clone();
    assert!(
        records
            .iter()
            .any(|r| r["actor"] == "test-admin" && r["agent_id"] == "edge-01"),
        "{records:?}"
    );
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn labels_given_at_enrolment_are_authoritative_from_the_first_hello() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let options = HubOptions {
        extra: eu_ops_token(),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[], options).await;

    // Bad labels are refused before anything is enrolled.
    let bad = json!({"agent_id": "edge-01", "pin": edge.pin, "labels": {"": "x"}});
    let r = call(&hub, "POST", "/api/v1/enrollments", ADMIN_TOKEN, Some(bad)).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = call(&hub, "GET", "/api/v1/agents/edge-01", ADMIN_TOKEN, None).await;
    assert_eq!(r.status, 404, "nothing enrolled: {}", r.body);

    let body = json!({"agent_id": "edge-01", "pin": edge.pin, "labels": {"region": "us"}});
    let r = call(&hub, "POST", "/api/v1/enrollments", ADMIN_TOKEN, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The agent claims region=eu in its hello (the harness's agent config does).
    let agent = TestAgent::connect(&pki, &hub, "edge-01", &edge_dir).await;
    let view = call(&hub, "GET", "/api/v1/agents/edge-01", ADMIN_TOKEN, None).await;
    assert_eq!(view.json()["authoritative_labels"], json!({"region": "us"}));
    assert_eq!(view.json()["labels"]["region"], "us", "{}", view.body);

    let fan_out = json!({"selector": {"labels": {}}, "verb": "ping"});
    let r = call(&hub, "POST", "/api/v1/commands", EU_OPS, Some(fan_out)).await;
    assert_eq!(r.status, 422, "no fan-out reaches it: {}", r.body);
    let r = call(
        &hub,
        "POST",
        "/api/v1/agents/edge-01/commands",
        EU_OPS,
        Some(json!({"verb": "ping"})),
    )
    .await;
    assert_eq!(r.status, 403, "nor a single command: {}", r.body);

    let audit = call(
        &hub,
        "GET",
        "/api/v1/audit?kind=labels_set&agent=edge-01",
        ADMIN_TOKEN,
        None,
    )
    .await;
    let records = audit.json()["records"].as_array().unwrap().clone();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["actor"], "test-admin");
    agent.stop().await;
    hub.stop().await;
}
