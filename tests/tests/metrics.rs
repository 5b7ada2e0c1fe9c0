//! Issue 8, "Metrics and readiness": the backend's and the agent's `/metrics` parse as
//! Prometheus text (strict parser in `prom_text/`) and carry every family the issue lists,
//! with values that follow what happened; `/ready` is 503 while draining.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prom_text;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use agentmesh_e2e::backend::{HubOptions, OPERATOR_TOKEN};
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use prom_text::Family;
use serde_json::json;

async fn scrape(addr: SocketAddr) -> BTreeMap<String, Family> {
    let r = http::get(addr, "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content-type {ct}"
    );
    prom_text::parse(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body))
}

fn has(families: &BTreeMap<String, Family>, name: &str, kind: &str) -> bool {
    families
        .get(name)
        .is_some_and(|f| f.kind == kind && !f.samples.is_empty())
}

/// A free loopback port for the agent's health listener (bound, read, released).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn backend_and_agent_metrics_parse_and_carry_every_family() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let (_stranger, stranger_dir) = pki.agent("edge-09");
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 1\n\
                 operator_burst = 1\n"
            .to_owned(),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[("edge-01", &edge.pin)], options).await;
    let health = free_port();
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        hub.hub,
        &[&hub.server_pin],
        "",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[outbound]",
        &format!("health_listen = \"{health}\"\n\n[outbound]"),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let agent = TestAgent::start(cfg);
    eventually("edge-01 connected", PATIENCE, || async {
        hub.is_connected("edge-01")
    })
    .await;

    // One command that finishes, then operator requests until the limiter refuses one.
    let body = json!({"verb": "echo", "args": {"message": "hi"}, "wait": true}).to_string();
    let path = "/api/v1/agents/edge-01/commands";
    let r = http::request(hub.http, "POST", path, Some(OPERATOR_TOKEN), Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("an operator request is rate limited", PATIENCE, || {
        let body = body.clone();
        async move {
            let r = http::request(hub.http, "POST", path, Some(OPERATOR_TOKEN), Some(&body)).await;
            r.status == 429
        }
    })
    .await;
    // A handshake refusal: a certificate from the CA whose pin is not enrolled.
    let stranger_cfg = agent::write_config(
        pki.path(),
        "edge-09",
        &stranger_dir,
        hub.hub,
        &[&hub.server_pin],
        "",
    );
    let stranger = TestAgent::start(stranger_cfg);
    eventually("the stranger is refused", PATIENCE, || async {
        hub.backend()
            .metrics
            .render(0)
            .contains("agentmesh_hub_rejected_total{")
    })
    .await;
    stranger.stop().await;

    let m = scrape(hub.http).await;
    for (name, kind) in [
        ("agentmesh_agents_connected", "gauge"),
        ("agentmesh_sessions_opened_total", "counter"),
        ("agentmesh_hub_rejected_total", "counter"),
        ("agentmesh_commands_total", "counter"),
        ("agentmesh_command_duration_seconds", "histogram"),
        ("agentmesh_queue_depth", "gauge"),
        ("agentmesh_agent_outbound_queue_max", "gauge"),
        ("agentmesh_rate_limited_total", "counter"),
        ("agentmesh_audit_records_total", "counter"),
        ("agentmesh_audit_fsyncs_total", "counter"),
        ("agentmesh_audit_fsync_duration_seconds", "histogram"),
        ("agentmesh_agent_cert_expiry_seconds", "gauge"),
        ("agentmesh_agent_cert_expiry_min_seconds", "gauge"),
        ("agentmesh_build_info", "gauge"),
        ("agentmesh_api_auth_failures_total", "counter"),
        ("agentmesh_draining", "gauge"),
    ] {
        assert!(
            has(&m, name, kind),
            "{name} ({kind}) missing: {:?}",
            m.get(name)
        );
    }
    let v = |name: &str, labels: &[(&str, &str)]| m[name].value(name, labels);
    assert_eq!(v("agentmesh_agents_connected", &[]), Some(1.0));
    assert_eq!(
        v(
            "agentmesh_commands_total",
            &[("verb", "echo"), ("status", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m["agentmesh_command_duration_seconds"]
            .value("agentmesh_command_duration_seconds_count", &[]),
        Some(1.0)
    );
    assert!(v("agentmesh_rate_limited_total", &[("limiter", "operator")]).unwrap() >= 1.0);
    let refused: f64 = m["agentmesh_hub_rejected_total"]
        .samples
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(refused >= 1.0, "{:?}", m["agentmesh_hub_rejected_total"]);
    assert!(v("agentmesh_audit_records_total", &[]).unwrap() > 0.0);
    // The agent certificate is valid for days; its expiry is in the future.
    let expiry = v(
        "agentmesh_agent_cert_expiry_seconds",
        &[("agent", "edge-01")],
    )
    .unwrap();
    assert!(expiry > 0.0, "{expiry}");
    assert!(v("agentmesh_agent_cert_expiry_min_seconds", &[]).unwrap() <= expiry);
    assert_eq!(v("agentmesh_draining", &[]), Some(0.0));
    let build = &m["agentmesh_build_info"].samples[0];
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));

    // The agent's own metrics on health_listen.
    let g = scrape(health).await;
    for (name, kind) in [
        ("agentmesh_gateway_connected", "gauge"),
        ("agentmesh_gateway_connects_total", "counter"),
        ("agentmesh_gateway_pin_mismatches_total", "counter"),
        ("agentmesh_gateway_renewals_total", "counter"),
        ("agentmesh_gateway_commands_total", "counter"),
        ("agentmesh_gateway_command_duration_seconds", "histogram"),
        ("agentmesh_gateway_build_info", "gauge"),
        ("agentmesh_audit_fsync_duration_seconds", "histogram"),
    ] {
        assert!(
            has(&g, name, kind),
            "agent: {name} ({kind}) missing: {:?}",
            g.get(name)
        );
    }
    let gv = |name: &str, labels: &[(&str, &str)]| g[name].value(name, labels);
    assert_eq!(gv("agentmesh_gateway_connected", &[]), Some(1.0));
    assert!(
        gv(
            "agentmesh_gateway_commands_total",
            &[("verb", "echo"), ("status", "ok")]
        )
        .unwrap()
            >= 1.0
    );

    // A session that ends is counted by reason.
    agent.stop().await;
    eventually("edge-01 gone", PATIENCE, || async {
        !hub.is_connected("edge-01")
    })
    .await;
    let m = scrape(hub.http).await;
    let closed: f64 = m["agentmesh_sessions_closed_total"]
        .samples
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(closed >= 1.0, "{:?}", m["agentmesh_sessions_closed_total"]);
    hub.stop().await;
}

#[tokio::test]
async fn ready_is_503_while_draining() {
    init_logging();
    let pki = Pki::new();
    let hub = TestHub::start(&pki, &[]).await;
    let r = http::get(hub.http, "/ready", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["draining"], false);
    // What `Backend::shutdown` does first; the HTTP server then stops accepting.
    hub.backend().live().begin_draining();
    let r = http::get(hub.http, "/ready", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["draining"], true);
    assert_eq!(r.json()["status"], "not_ready");
    hub.stop().await;
}
