//! Issue 7, "Authorisation in one layer" and "Authoritative labels": a scoped token can
//! neither cancel nor read what is outside its scope, labels an agent claims in `hello` never
//! widen a scope, and revoked identities are never targeted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{HubOptions, ADMIN_TOKEN, OPERATOR_TOKEN};
use agentmesh_e2e::fleet::VERBS;
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use backend_agent::auth::token_sha256_hex;
use serde_json::{json, Value};

/// Operator scoped to `region=eu` and the verbs `ping` and `sleep`.
const EU_OPS: &str = "amt_test_eu_ops";
/// Viewer scoped to `region=eu`.
const EU_VIEWER: &str = "amt_test_eu_viewer";

/// A backend with `eu-01` enrolled as `region=eu` and `us-01` enrolled as `region=us`; both
/// agents claim `region=eu` in their `hello` (the harness's agent config does).
async fn two_regions() -> (Pki, TestHub, Vec<TestAgent>) {
    init_logging();
    let pki = Pki::new();
    let (eu, eu_dir) = pki.agent("eu-01");
    let (us, us_dir) = pki.agent("us-01");
    let extra = format!(
        r#"
[[agents]]
id = "eu-01"
pins = ["{eu_pin}"]
labels = {{ region = "eu" }}

[[agents]]
id = "us-01"
pins = ["{us_pin}"]
labels = {{ region = "us" }}

[[tokens]]
name = "eu-ops"
sha256 = "{ops}"
role = "operator"
verbs = ["ping", "sleep"]
labels = {{ region = "eu" }}

[[tokens]]
name = "eu-viewer"
sha256 = "{viewer}"
role = "viewer"
labels = {{ region = "eu" }}
"#,
        eu_pin = eu.pin,
        us_pin = us.pin,
        ops = token_sha256_hex(EU_OPS),
        viewer = token_sha256_hex(EU_VIEWER),
    );
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 0\n"
            .to_owned(),
        extra,
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[], options).await;
    let mut agents = Vec::new();
    for (id, dir) in [("eu-01", &eu_dir), ("us-01", &us_dir)] {
        let cfg = agent::write_config(pki.path(), id, dir, hub.hub, &[&hub.server_pin], VERBS);
        agents.push(TestAgent::start(cfg));
    }
    for id in ["eu-01", "us-01"] {
        eventually(&format!("{id} connected"), PATIENCE, || async {
            hub.is_connected(id)
        })
        .await;
    }
    (pki, hub, agents)
}

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

async fn sleep_on(hub: &TestHub, token: &str, agent: &str) -> String {
    let r = call(
        hub,
        "POST",
        &format!("/api/v1/agents/{agent}/commands"),
        token,
        Some(json!({"verb": "sleep", "args": {"secs": "30"}})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["command_id"].as_str().unwrap().to_owned()
}

fn ids_in(list: &Value, key: &str, field: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c[field].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_scoped_operator_can_neither_cancel_nor_read_an_out_of_scope_command() {
    let (_pki, hub, agents) = two_regions().await;
    let theirs = sleep_on(&hub, ADMIN_TOKEN, "us-01").await;
    let mine = sleep_on(&hub, EU_OPS, "eu-01").await;

    // Out of scope: 404 for cancel and every read, as if it did not exist.
    let r = call(
        &hub,
        "DELETE",
        &format!("/api/v1/commands/{theirs}"),
        EU_OPS,
        None,
    )
    .await;
    assert_eq!(r.status, 404, "cancel: {}", r.body);
    for token in [EU_OPS, EU_VIEWER] {
        let r = call(
            &hub,
            "GET",
            &format!("/api/v1/commands/{theirs}"),
            token,
            None,
        )
        .await;
        assert_eq!(r.status, 404, "read: {}", r.body);
        let list = call(&hub, "GET", "/api/v1/commands?limit=1000", token, None).await;
        assert_eq!(list.status, 200, "{}", list.body);
        let ids = ids_in(&list.json(), "commands", "command_id");
        assert!(ids.contains(&mine) && !ids.contains(&theirs), "{ids:?}");
    }
    // The command still runs: the refused cancel did nothing.
    let r = call(
        &hub,
        "GET",
        &format!("/api/v1/commands/{theirs}"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_ne!(r.json()["status"], "cancelled", "{}", r.body);

    // A job: only its in-scope targets are shown; a job with none is unknown.
    let job = call(
        &hub,
        "POST",
        "/api/v1/commands",
        ADMIN_TOKEN,
        Some(json!({"selector": {"ids": ["eu-01", "us-01"]}, "verb": "ping"})),
    )
    .await;
    assert_eq!(job.status, 202, "{}", job.body);
    let job_id = job.json()["job_id"].as_str().unwrap().to_owned();
    let view = call(
        &hub,
        "GET",
        &format!("/api/v1/commands/{job_id}"),
        EU_VIEWER,
        None,
    )
    .await;
    assert_eq!(view.status, 200, "{}", view.body);
    let shown = ids_in(&view.json(), "results", "agent_id");
    assert_eq!(shown, ["eu-01"], "{}", view.body);
    let us_job = call(
        &hub,
        "POST",
        "/api/v1/commands",
        ADMIN_TOKEN,
        Some(json!({"selector": {"ids": ["us-01"]}, "verb": "ping"})),
    )
    .await;
    let us_job_id = us_job.json()["job_id"].as_str().unwrap().to_owned();
    let r = call(
        &hub,
        "GET",
        &format!("/api/v1/commands/{us_job_id}"),
        EU_VIEWER,
        None,
    )
    .await;
    assert_eq!(r.status, 404, "job view: {}", r.body);

    // Its own command: cancel works and is audited with the actor.
    let r = call(
        &hub,
        "DELETE",
        &format!("/api/v1/commands/{mine}"),
        EU_OPS,
        None,
    )
    .await;
    assert_eq!(r.status, 202, "own cancel: {}", r.body);
    eventually("own command cancelled", PATIENCE, || async {
        let r = call(
            &hub,
            "GET",
            &format!("/api/v1/commands/{mine}"),
            EU_OPS,
            None,
        )
        .await;
        r.json()["status"] == "cancelled"
    })
    .await;
    let audit = call(
        &hub,
        "GET",
        "/api/v1/audit?kind=command_cancelled&limit=1000",
        ADMIN_TOKEN,
        None,
    )
    .await;
    let records = audit.json()["records"].as_array().unwrap().clone();
    assert!(
        records
            .iter()
            .any(|r| r["command_id"] == mine.as_str() && r["actor"] == "eu-ops"),
        "{records:?}"
    );
    assert!(
        !records.iter().any(|r| r["command_id"] == theirs.as_str()),
        "a refused cancel is not recorded as one"
    );

    // Audit reads are filtered too: nothing about us-01 or its commands, nothing without an
    // agent, while an unscoped reader sees them.
    for token in [EU_OPS, EU_VIEWER] {
        let audit = call(&hub, "GET", "/api/v1/audit?limit=1000", token, None).await;
        assert_eq!(audit.status, 200, "{}", audit.body);
        let records = audit.json()["records"].as_array().unwrap().clone();
        assert!(!records.is_empty());
        for r in &records {
            assert_eq!(r["agent_id"], "eu-01", "out of scope for {token}: {r}");
            assert_ne!(r["command_id"], theirs.as_str());
        }
    }
    let audit = call(
        &hub,
        "GET",
        "/api/v1/audit?agent=us-01&limit=1000",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert!(!audit.json()["records"].as_array().unwrap().is_empty());

    for a in agents {
        a.stop().await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn labels_claimed_in_hello_never_widen_a_scope() {
    let (_pki, hub, agents) = two_regions().await;
    // us-01 claims region=eu in its hello; its enrolment says region=us.
    let view = call(&hub, "GET", "/api/v1/agents/us-01", ADMIN_TOKEN, None).await;
    assert_eq!(view.json()["labels"]["region"], "us", "{}", view.body);
    assert_eq!(view.json()["authoritative_labels"]["region"], "us");
    // A label-scoped token sees only the agents in its scope.
    let listed = call(&hub, "GET", "/api/v1/agents", EU_VIEWER, None).await;
    assert_eq!(
        ids_in(&listed.json(), "agents", "id"),
        ["eu-01"],
        "{}",
        listed.body
    );
    let r = call(&hub, "GET", "/api/v1/agents/us-01", EU_VIEWER, None).await;
    assert_eq!(r.status, 404, "{}", r.body);

    let r = call(
        &hub,
        "POST",
        "/api/v1/agents/us-01/commands",
        EU_OPS,
        Some(json!({"verb": "ping"})),
    )
    .await;
    assert_eq!(r.status, 403, "single command: {}", r.body);
    let r = call(
        &hub,
        "POST",
        "/api/v1/commands",
        EU_OPS,
        Some(json!({"selector": {"labels": {"region": "eu"}}, "verb": "ping"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["targets"], json!(["eu-01"]), "{}", r.body);
    // Naming it by id does not help either.
    let r = call(
        &hub,
        "POST",
        "/api/v1/commands",
        EU_OPS,
        Some(json!({"selector": {"ids": ["us-01"]}, "verb": "ping"})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    // Selectors of unscoped tokens match the enrolment labels as well.
    let r = call(
        &hub,
        "POST",
        "/api/v1/commands",
        OPERATOR_TOKEN,
        Some(json!({"selector": {"labels": {"region": "us"}}, "verb": "ping"})),
    )
    .await;
    assert_eq!(r.json()["targets"], json!(["us-01"]), "{}", r.body);

    for a in agents {
        a.stop().await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_revoked_agent_is_never_targeted() {
    let (_pki, hub, agents) = two_regions().await;
    let r = call(&hub, "DELETE", "/api/v1/agents/us-01", ADMIN_TOKEN, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        &hub,
        "POST",
        "/api/v1/agents/us-01/commands",
        ADMIN_TOKEN,
        Some(json!({"verb": "ping", "queue_ttl_ms": 60000})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "agent_revoked");
    for selector in [json!({"ids": ["eu-01", "us-01"]}), json!({"labels": {}})] {
        let r = call(
            &hub,
            "POST",
            "/api/v1/commands",
            ADMIN_TOKEN,
            Some(json!({"selector": selector, "verb": "ping"})),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.json()["targets"], json!(["eu-01"]), "{}", r.body);
    }
    for a in agents {
        a.stop().await;
    }
    hub.stop().await;
}
