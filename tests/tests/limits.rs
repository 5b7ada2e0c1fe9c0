//! Bounds and their answers at the bound: the per-target-agent rate (429), the held-command
//! queue (503 + Retry-After), cancel of a held command, the request body limit (413), JSON
//! without a Content-Type, the `/api/v1/enroll` throttle and hub admission overflow (503 +
//! Retry-After on the upgrade).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use agentmesh_e2e::backend::{HubOptions, OPERATOR_TOKEN};
use agentmesh_e2e::fleet::{fleet, fleet_with, get_command, run, wait_final};
use agentmesh_e2e::{eventually, http, raw, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::json;

/// No operator limit (the tests below are about other bounds); `agent` is the per-agent part.
fn limits(agent: &str) -> HubOptions {
    HubOptions {
        limits: format!(
            "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 0\n{agent}"
        ),
        ..HubOptions::default()
    }
}

#[tokio::test]
async fn the_per_target_agent_rate_limit_answers_429_and_spares_other_agents() {
    let f = fleet_with(
        &[("edge-01", "panel"), ("edge-02", "panel")],
        limits("agent_commands_per_sec = 1\nagent_burst = 2\n"),
    )
    .await;
    let (mut accepted, mut limited) = (0usize, 0usize);
    let started = Instant::now();
    for _ in 0..12 {
        let r = run(&f.hub, "edge-01", json!({"verb": "ping"})).await;
        match r.status {
            202 => accepted += 1,
            429 => {
                limited += 1;
                assert_eq!(r.json()["error"]["code"], "rate_limited", "{}", r.body);
                let retry: u64 = r
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    // Bounded by the time really taken: the burst of 2, 1 per elapsed second, +1 at the edge.
    let elapsed = started.elapsed().as_secs_f64();
    let most = (2.0 + elapsed).floor() as usize + 1;
    assert!(
        (2..=most.min(12)).contains(&accepted),
        "accepted {accepted} in {elapsed:.2}s (at most {most})"
    );
    assert_eq!(accepted + limited, 12);
    if most < 12 {
        assert!(limited > 0, "nothing limited in {elapsed:.2}s");
    }
    // The limit is per target: another agent is not starved by edge-01's flood.
    let r = run(&f.hub, "edge-02", json!({"verb": "ping"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
}

#[tokio::test]
async fn the_held_queue_of_an_offline_agent_is_bounded_with_503_and_retry_after() {
    let mut f = fleet_with(
        &[("edge-01", "panel")],
        limits("agent_commands_per_sec = 0\n"),
    )
    .await;
    f.agents.pop().unwrap().stop().await;
    eventually("offline", PATIENCE, || async {
        !f.hub.is_connected("edge-01")
    })
    .await;
    let bound = backend_agent::commands::MAX_QUEUED_PER_AGENT;
    let body = json!({"verb": "ping", "queue_ttl_ms": 600_000});
    for i in 0..bound {
        let r = run(&f.hub, "edge-01", body.clone()).await;
        assert_eq!(r.status, 202, "held command {i}: {}", r.body);
    }
    let r = run(&f.hub, "edge-01", body).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "queue_full", "{}", r.body);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
}

#[tokio::test]
async fn a_held_command_can_be_cancelled_and_never_runs() {
    let mut f = fleet(&[("edge-01", "panel")]).await;
    let agent = f.agents.pop().unwrap();
    let cfg = agent.config_path.clone();
    agent.stop().await;
    eventually("offline", PATIENCE, || async {
        !f.hub.is_connected("edge-01")
    })
    .await;
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "ping", "queue_ttl_ms": 600_000}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let held = r.json()["command_id"].as_str().unwrap().to_owned();
    let r = http::request(
        f.hub.http,
        "DELETE",
        &format!("/api/v1/commands/{held}"),
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(get_command(&f.hub, &held).await["status"], "cancelled");
    // A command held after it is dispatched when the agent returns; the cancelled one never is.
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "ping", "queue_ttl_ms": 600_000}),
    )
    .await;
    let later = r.json()["command_id"].as_str().unwrap().to_owned();
    let agent = TestAgent::start(cfg);
    agent.wait_connected(&f.hub, "edge-01").await;
    assert_eq!(wait_final(&f.hub, &later).await["status"], "ok");
    let rec = get_command(&f.hub, &held).await;
    assert_eq!(rec["status"], "cancelled", "{rec}");
    assert!(rec["started_at"].is_null(), "{rec}");
    agent.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_json_needs_no_content_type() {
    let options = HubOptions {
        extra: "[http]\nmax_body_bytes = 4096\n".into(),
        ..HubOptions::default()
    };
    let pki = Pki::new();
    let hub = TestHub::start_with(&pki, &[], options).await;
    let big = json!({"agent_id": "x".repeat(8192), "ttl_secs": 60}).to_string();
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/enrollments",
        Some(agentmesh_e2e::backend::ADMIN_TOKEN),
        Some(&big),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "too_large", "{}", r.body);
    // `curl -d` style: a JSON body without any Content-Type header is accepted.
    let body = json!({"agent_id": "edge-07", "ttl_secs": 60}).to_string();
    let raw = format!(
        "POST /api/v1/enrollments HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
        hub.http,
        agentmesh_e2e::backend::ADMIN_TOKEN,
        body.len()
    );
    let r = http::request_raw(
        hub.http,
        "POST /api/v1/enrollments (no Content-Type)",
        raw.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.json()["token"].is_string(), "{}", r.body);
    hub.stop().await;
}

#[tokio::test]
async fn join_token_guessing_is_throttled_per_address() {
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 1\noperator_burst = 3\n".into(),
        ..HubOptions::default()
    };
    let pki = Pki::new();
    let hub = TestHub::start_with(&pki, &[], options).await;
    let (csr, _) = mesh_certs::generate_csr("edge-01").unwrap();
    let guess = json!({"token": "amj_guess", "agent_id": "edge-01", "csr": csr}).to_string();
    let mut statuses = Vec::new();
    let mut throttled = None;
    // The burst is 3: a 429 must come within a few more attempts, however slow the box (each
    // attempt refills at most what the elapsed time allows, and the loop stops at the first).
    let started = Instant::now();
    for _ in 0..40 {
        let r = http::request(hub.http, "POST", "/api/v1/enroll", None, Some(&guess)).await;
        statuses.push(r.status);
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let Some(r) = throttled else {
        // Only a box slower than 1 attempt per second could refill faster than 40 attempts.
        assert!(
            elapsed > 37.0,
            "never throttled in {elapsed:.1}s: {statuses:?}"
        );
        return;
    };
    assert_eq!(r.json()["error"]["code"], "rate_limited", "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{}", r.headers);
    hub.stop().await;
}

/// Upgrades over a fresh TLS connection; Err holds the HTTP status and Retry-After of a
/// refused upgrade.
async fn upgrade_status(
    hub: std::net::SocketAddr,
    ca: &str,
    identity: &mesh_certs::Issued,
) -> Result<(), (u16, Option<String>)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let stream = raw::tls(hub, ca, Some(identity))
        .await
        .map_err(|_| (0, None))?;
    let request = format!("wss://{hub}/ws/agent")
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok(_) => Ok(()),
        Err(Error::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        )),
        Err(_) => Err((0, None)),
    }
}

#[tokio::test]
async fn admission_overflow_is_refused_with_503_and_retry_after() {
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    // One handshake per second, no burst: of many at once, those that would wait past the
    // hub's admission bound are answered 503 + Retry-After instead of queueing forever.
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 0\nhub_handshakes_per_sec = 1\nhub_handshake_burst = 1\n".into(),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[("edge-01", &edge.pin)], options).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (addr, ca, id) = (hub.hub, pki.ca.cert_pem().to_owned(), edge.clone());
        tasks.push(tokio::spawn(
            async move { upgrade_status(addr, &ca, &id).await },
        ));
    }
    let mut refused = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            refused.push(e);
        }
    }
    let overflow: Vec<_> = refused.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!overflow.is_empty(), "no 503 among {refused:?}");
    for (_, retry) in overflow {
        let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
        assert!(secs >= 1);
    }
    hub.stop().await;
}
