//! Option injection end to end: a string value starting with `-` is 422 at the API unless the
//! agent's parameter sets `allow_leading_dash`, in which case the real agent runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::OPERATOR_TOKEN;
use agentmesh_e2e::fleet::run;
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::json;

/// `printf '%s\n' VALUE`: the value is printed as data, whatever it looks like.
const VERBS: &str = r#"
[[verbs]]
name = "print_flags"
description = "prints a value that may start with a dash"
program = "/usr/bin/printf"
args = ["%s\n", "{flags}"]
timeout_secs = 5
params.flags = { type = "string", pattern = "-{1,2}[a-z]+", allow_leading_dash = true, required = true }
"#;

#[tokio::test]
async fn a_leading_dash_is_422_unless_the_param_allows_it() {
    init_logging();
    let pki = Pki::new();
    let (issued, dir) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &issued.pin)]).await;
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &dir,
        hub.hub,
        &[&hub.server_pin],
        VERBS,
    );
    let _agent = TestAgent::start(cfg);
    eventually("edge-01 connected", PATIENCE, || async {
        hub.is_connected("edge-01")
    })
    .await;

    // The harness's `echo` verb: a plain string parameter with only a max_len.
    for value in ["-rf", "--output=/etc/cron.d/x"] {
        let r = run(
            &hub,
            "edge-01",
            json!({"verb": "echo", "args": {"message": value}, "wait": true}),
        )
        .await;
        assert_eq!(r.status, 422, "{value}: {}", r.body);
        let error = &r.json()["error"];
        assert_eq!(error["code"], "invalid_args", "{}", r.body);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("allow_leading_dash"),
            "{}",
            r.body
        );
    }
    // The same refusal for a fan-out.
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/commands",
        Some(OPERATOR_TOKEN),
        Some(
            &json!({"selector": {"ids": ["edge-01"]}, "verb": "echo", "args": {"message": "-rf"}})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // With allow_leading_dash the value passes the backend and the agent, and arrives as data.
    let r = run(
        &hub,
        "edge-01",
        json!({"verb": "print_flags", "args": {"flags": "-rf"}, "wait": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rec = r.json();
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["stdout"], "-rf\n", "{rec}");
    // Its pattern still applies.
    let r = run(
        &hub,
        "edge-01",
        json!({"verb": "print_flags", "args": {"flags": "--output=/x"}}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
}

/// A hand-driven agent (not our gateway, which refuses such configs) advertises a verb whose
/// pattern is over the compile limit and a verb with a plain string parameter: the backend
/// refuses both with 422 itself, and nothing reaches the agent.
#[tokio::test]
async fn the_backend_refuses_by_itself_whatever_the_agent_advertises() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let mut client = agentmesh_e2e::raw::connect(hub.hub, pki.ca.cert_pem(), &edge)
        .await
        .unwrap();
    let mut hello = agentmesh_e2e::raw::hello("edge-01", 1);
    hello["verbs"] = json!([
        {"name": "huge", "params": {"p": {"type": "string", "pattern": "(\\w{100}){100}"}}},
        {"name": "plain", "params": {"p": {"type": "string"}}}
    ]);
    client.send_json(&hello).await;
    let welcome = client.next_json(PATIENCE).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    eventually("edge-01 connected", PATIENCE, || async {
        hub.is_connected("edge-01")
    })
    .await;

    for (verb, value, says) in [
        ("huge", "a", "pattern"),
        ("plain", "-rf", "allow_leading_dash"),
    ] {
        let r = run(
            &hub,
            "edge-01",
            json!({"verb": verb, "args": {"p": value}, "wait": false}),
        )
        .await;
        assert_eq!(r.status, 422, "{verb}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_args", "{}", r.body);
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{verb}: {message}");
    }
    // The one command the backend does accept is the first frame the agent sees.
    let r = run(
        &hub,
        "edge-01",
        json!({"verb": "plain", "args": {"p": "ok"}, "wait": false}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let frame = client.next_json(PATIENCE).await.expect("a command frame");
    assert_eq!(frame["type"], "command", "{frame}");
    assert_eq!(frame["args"]["p"], "ok", "{frame}");
}
