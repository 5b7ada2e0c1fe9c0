//! Fixtures for command tests: a fleet of connected agents with test verbs, and API helpers.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::backend::{HubOptions, ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN};
use crate::{agent, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};

/// Verbs the command tests configure on every agent.
pub const VERBS: &str = r#"
[[verbs]]
name = "sleep"
description = "sleeps"
program = "/bin/sleep"
args = ["{secs}"]
timeout_secs = 30
params.secs = { type = "string", pattern = "[0-9]+(\\.[0-9]+)?", required = true }

[[verbs]]
name = "group"
description = "a shell with two sleeps, one in the background: a process group"
program = "/bin/sh"
args = ["-c", "sleep {secs} & sleep {secs}; wait"]
timeout_secs = 30
params.secs = { type = "string", pattern = "[0-9]+(\\.[0-9]+)?", required = true }

[[verbs]]
name = "fail"
description = "always fails"
program = "/bin/false"
args = []
timeout_secs = 5

[[verbs]]
name = "mkunique"
description = "creates one new unique directory under a fixed parent"
program = "/usr/bin/mktemp"
args = ["-d", "-p", "{parent}"]
timeout_secs = 5
params.parent = { type = "string", max_len = 4096, required = true }

[[verbs]]
name = "typed"
description = "schema test"
program = "/bin/echo"
args = ["{name}", "{count}", "{flag}", "{color}"]
timeout_secs = 5
params.name = { type = "string", pattern = "[a-z]{3,8}", required = true }
params.count = { type = "integer", min = 1, max = 10 }
params.flag = { type = "boolean" }
params.color = { type = "enum", values = ["red", "blue"] }
"#;

/// A hub with connected agents.
pub struct Fleet {
    /// The PKI.
    pub pki: Pki,
    /// The backend.
    pub hub: TestHub,
    /// The agents, in order.
    pub agents: Vec<TestAgent>,
}

/// Starts a backend and one agent per (id, role label), all connected.
pub async fn fleet(ids: &[(&str, &str)]) -> Fleet {
    fleet_with(ids, HubOptions::default()).await
}

/// [`fleet`] with backend options (extra tokens, limits).
pub async fn fleet_with(ids: &[(&str, &str)], options: HubOptions) -> Fleet {
    fleet_with_verbs(ids, options, VERBS).await
}

/// [`fleet_with`] where every agent offers `verbs` (TOML `[[verbs]]` tables).
pub async fn fleet_with_verbs(ids: &[(&str, &str)], options: HubOptions, verbs: &str) -> Fleet {
    init_logging();
    let pki = Pki::new();
    let issued: Vec<_> = ids
        .iter()
        .map(|(id, _)| (id.to_string(), pki.agent(id)))
        .collect();
    let enrol: Vec<(&str, &str)> = issued
        .iter()
        .map(|(id, (c, _))| (id.as_str(), c.pin.as_str()))
        .collect();
    let hub = TestHub::start_with(&pki, &enrol, options).await;
    let mut agents = Vec::new();
    for ((id, role), (_, (_, dir))) in ids.iter().zip(issued.iter()) {
        let cfg = agent::write_config(pki.path(), id, dir, hub.hub, &[&hub.server_pin], verbs);
        // Per-agent role label.
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(
            text.contains("role = \"panel\""),
            "agent config template changed"
        );
        let text = text.replace("role = \"panel\"", &format!("role = \"{role}\""));
        std::fs::write(&cfg, text).unwrap();
        agents.push(TestAgent::start(cfg));
    }
    for ((id, _), agent) in ids.iter().zip(agents.iter()) {
        agent.wait_connected(&hub, id).await;
    }
    Fleet { pki, hub, agents }
}

/// `POST /api/v1/agents/{agent}/commands` as the operator.
pub async fn run(hub: &TestHub, agent: &str, body: Value) -> http::Response {
    http::request(
        hub.http,
        "POST",
        &format!("/api/v1/agents/{agent}/commands"),
        Some(OPERATOR_TOKEN),
        Some(&body.to_string()),
    )
    .await
}

/// `GET /api/v1/commands/{id}` as a viewer.
pub async fn get_command(hub: &TestHub, id: &str) -> Value {
    http::get(
        hub.http,
        &format!("/api/v1/commands/{id}"),
        Some(VIEWER_TOKEN),
    )
    .await
    .json()
}

/// Polls a command until it is final.
pub async fn wait_final(hub: &TestHub, id: &str) -> Value {
    poll(hub, id, |v| {
        !matches!(
            v["status"].as_str(),
            Some("pending" | "dispatched" | "running")
        )
    })
    .await
}

/// Polls `GET /api/v1/commands/{id}` until `done` holds.
pub async fn poll(hub: &TestHub, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let v = get_command(hub, id).await;
        if done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out polling {id}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `echo` of `message` on `agent` through `hub` with `wait: true`; asserts it ran (200,
/// status ok, the message back) and returns the record.
pub async fn assert_echo(hub: &TestHub, agent: &str, message: &str) -> Value {
    let body = serde_json::json!({"verb": "echo", "args": {"message": message}, "wait": true});
    let resp = run(hub, agent, body).await;
    assert_eq!(resp.status, 200, "{message} to {agent}: {}", resp.body);
    let rec = resp.json();
    assert_eq!(rec["status"], "ok", "{message} to {agent}: {rec}");
    assert_eq!(rec["stdout"], format!("{message}\n"), "{rec}");
    rec
}

/// `POST /api/v1/commands` (a fan-out job) as the operator, asserted 202; polls the job
/// until nothing is pending and returns it.
pub async fn fan_out(hub: &TestHub, body: Value) -> Value {
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/commands",
        Some(OPERATOR_TOKEN),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let job_id = r.json()["job_id"].as_str().unwrap_or_default().to_owned();
    poll(hub, &job_id, |v| v["summary"]["pending"] == 0).await
}

/// `POST /api/v1/enrollments` of `body` through the API at `api` as the admin (asserted
/// 201): a join token (`{"agent_id", "ttl_secs"}`) or an admin pin (`{"agent_id", "pin"}`).
/// Returns the answer.
pub async fn create_enrolment(api: SocketAddr, body: &Value) -> Value {
    let body = body.to_string();
    let r = http::request(
        api,
        "POST",
        "/api/v1/enrollments",
        Some(ADMIN_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

/// A join token for `id`, valid `ttl_secs`, created through the API at `api` as the admin
/// (asserted 201).
pub async fn join_token(api: SocketAddr, id: &str, ttl_secs: u64) -> String {
    let body = serde_json::json!({"agent_id": id, "ttl_secs": ttl_secs});
    let v = create_enrolment(api, &body).await;
    v["token"].as_str().unwrap_or_default().to_owned()
}
