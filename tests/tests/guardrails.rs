//! Issue "guardrails": operator scopes, rate limits, connection floods, admission pacing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agentmesh_e2e::backend::{HubOptions, VIEWER_TOKEN};
use agentmesh_e2e::{eventually, http, init_logging, raw, Pki, TestAgent, TestHub, PATIENCE};
use backend_agent::auth::token_sha256_hex;
use serde_json::json;

fn token(name: &str, secret: &str, extra: &str) -> String {
    format!(
        "\n[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"operator\"\n{extra}\n",
        token_sha256_hex(secret)
    )
}

async fn post(hub: &TestHub, token: &str, path: &str, body: serde_json::Value) -> http::Response {
    http::request(hub.http, "POST", path, Some(token), Some(&body.to_string())).await
}

#[tokio::test]
async fn operator_scopes_limit_verbs_and_labels() {
    init_logging();
    let pki = Pki::new();
    let (panel, panel_dir) = pki.agent("panel-01");
    let mut extra = token("ops-ping", "amt_ops_ping", "verbs = [\"ping\"]");
    extra.push_str(&token("ops-db", "amt_ops_db", "labels = { role = \"db\" }"));
    let options = HubOptions {
        extra,
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[("panel-01", &panel.pin)], options).await;
    let agent = TestAgent::connect(&pki, &hub, "panel-01", &panel_dir).await;

    let path = "/api/v1/agents/panel-01/commands";
    let r = post(&hub, VIEWER_TOKEN, path, json!({"verb": "ping"})).await;
    assert_eq!(r.status, 403, "viewer: {}", r.body);
    let r = post(&hub, "amt_ops_ping", path, json!({"verb": "sysinfo"})).await;
    assert_eq!(r.status, 403, "verb scope: {}", r.body);
    let r = post(&hub, "amt_ops_ping", path, json!({"verb": "ping"})).await;
    assert_eq!(r.status, 202, "in scope: {}", r.body);
    let r = post(&hub, "amt_ops_db", path, json!({"verb": "ping"})).await;
    assert_eq!(r.status, 403, "label scope: {}", r.body);
    let r = post(
        &hub,
        "amt_ops_db",
        "/api/v1/commands",
        json!({"selector": {"labels": {"role": "panel"}}, "verb": "ping"}),
    )
    .await;
    assert_eq!(r.status, 403, "label scope on fan-out: {}", r.body);
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_while_another_token_goes_through() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let mut extra = token("ops-a", "amt_ops_a", "");
    extra.push_str(&token("ops-b", "amt_ops_b", ""));
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 2\noperator_burst = 4\nagent_commands_per_sec = 0\n".into(),
        extra,
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[("edge-01", &edge.pin)], options).await;
    let agent = TestAgent::connect(&pki, &hub, "edge-01", &edge_dir).await;

    let path = "/api/v1/agents/edge-01/commands";
    let mut accepted = 0;
    let mut limited = 0;
    let started = Instant::now();
    for _ in 0..20 {
        let r = post(&hub, "amt_ops_a", path, json!({"verb": "ping"})).await;
        match r.status {
            202 => accepted += 1,
            429 => {
                limited += 1;
                let retry: u64 = r
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                assert_eq!(r.json()["error"]["code"], "rate_limited");
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    // Bounded by the time the 20 requests really took (a slow box refills more tokens):
    // the burst of 4, plus 2 per elapsed second, plus one for a refill at the boundary.
    let elapsed = started.elapsed().as_secs_f64();
    let most = (4.0 + 2.0 * elapsed).floor() as usize + 1;
    assert!(
        (4..=most.min(20)).contains(&accepted),
        "accepted {accepted} in {elapsed:.2}s (at most {most})"
    );
    assert_eq!(accepted + limited, 20);
    if most < 20 {
        assert!(limited > 0, "nothing limited in {elapsed:.2}s");
    }
    let r = post(&hub, "amt_ops_b", path, json!({"verb": "ping"})).await;
    assert_eq!(r.status, 202, "another token is not starved: {}", r.body);
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_connection_flood_from_one_address_is_cut_before_tls() {
    let pki = Pki::new();
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 5\nhub_connects_per_ip_burst = 5\n".into(),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[], options).await;
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(tokio::net::TcpStream::connect(hub.hub).await.unwrap());
    }
    eventually("most of the flood refused before TLS", PATIENCE, || async {
        hub.backend().metrics.hub_rejected_count("ip_rate_limited") >= 50
    })
    .await;
    // Refused connections are closed at once: reading gives EOF/reset, not a TLS alert.
    use tokio::io::AsyncReadExt;
    let mut closed = 0;
    for s in held.iter_mut() {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 50, "closed {closed}");
    // Closed before stopping, or stop would wait out the handshake timeout of the admitted few.
    drop(held);
    hub.stop().await;
}

#[tokio::test]
async fn a_reconnect_storm_is_paced_at_the_admission_rate() {
    let pki = Pki::new();
    let agents: Vec<_> = (0..20)
        .map(|i| pki.agent(&format!("storm-{i:02}")).0)
        .collect();
    let enrol: Vec<(String, String)> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("storm-{i:02}"), a.pin.clone()))
        .collect();
    let enrol_refs: Vec<(&str, &str)> = enrol
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 0\nhub_handshakes_per_sec = 10\nhub_handshake_burst = 5\n".into(),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &enrol_refs, options).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let (hub_addr, ca, a) = (hub.hub, pki.ca.cert_pem().to_owned(), a.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = raw::connect(hub_addr, &ca, &a).await.unwrap();
            c.send_json(&raw::hello(&format!("storm-{i:02}"), 1)).await;
            c.next_json(PATIENCE).await.expect("welcome");
            (Instant::now(), c)
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    let elapsed = done
        .iter()
        .map(|(t, _)| t.duration_since(started))
        .max()
        .unwrap();
    // 5 at once, then 10 per second: the last of 20 needs (20 - 5) / 10 = 1.5 s of refill
    // after `started`, however fast or slow the machine. Only a lower bound is asserted (a
    // slow box only makes it longer); 0.25 s is left for timer granularity.
    let paced = Duration::from_secs_f64((20.0 - 5.0) / 10.0 - 0.25);
    assert!(elapsed >= paced, "storm not paced: {elapsed:?} < {paced:?}");
    assert_eq!(
        hub.backend()
            .metrics
            .hub_admitted
            .load(std::sync::atomic::Ordering::Relaxed),
        20
    );
    hub.stop().await;
}
