//! Issue 7, "bounded under abuse": floods of unauthenticated requests cost a few audit
//! records per source and window, not one each, and an enrolment flood has its own limiter,
//! so operators keep working through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use agentmesh_e2e::backend::OPERATOR_TOKEN;
use agentmesh_e2e::{http, init_logging, raw, Pki, TestAgent, TestHub};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Requests in flight at once: enough to flood, few enough for a 2-core box.
const IN_FLIGHT: usize = 16;

fn audit_records(config: &std::path::Path) -> Vec<Value> {
    let log = config.parent().unwrap().join("audit.log");
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `n` requests, `IN_FLIGHT` at a time; returns their statuses.
async fn flood<F, Fut>(n: usize, request: F) -> Vec<u16>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = u16> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let fut = request(i);
        tasks.push(tokio::spawn(async move {
            let status = fut.await;
            drop(permit);
            status
        }));
    }
    let mut statuses = Vec::with_capacity(n);
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn a_401_flood_of_10000_requests_writes_a_few_dozen_audit_records() {
    init_logging();
    let pki = Pki::new();
    let hub = TestHub::start(&pki, &[]).await;
    let addr = hub.http;
    let statuses = flood(10_000, |i| async move {
        // Half without a token, half with a wrong one.
        let token = format!("amt_wrong_{i}");
        let token = (i % 2 == 0).then_some(token);
        http::get(addr, "/api/v1/agents", token.as_deref())
            .await
            .status
    })
    .await;
    assert!(statuses.iter().all(|s| *s == 401));
    let metrics = http::get(addr, "/metrics", None).await.body;
    let aggregated: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agentmesh_unauthenticated_failures_aggregated_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the aggregation counter is exported");
    assert!(aggregated >= 9_900, "{aggregated}");
    let config: PathBuf = hub.config_path.clone();
    // Stopping closes the open window, so every failure is accounted for below.
    hub.stop().await;

    let records = audit_records(&config);
    let single: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "auth_failed")
        .collect();
    let summaries: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "unauthenticated_failures")
        .collect();
    let written = single.len() + summaries.len();
    println!("{written} audit records for 10,000 401s");
    assert!(
        (1..=40).contains(&written),
        "{written} records for 10,000 failures"
    );
    // Each window: one full record at once, then a summary counting the whole window.
    let summed: u64 = summaries
        .iter()
        .map(|r| r["details"]["count"].as_u64().unwrap())
        .sum();
    assert!(
        summed <= 10_000 && summed + single.len() as u64 >= 10_000,
        "{summed}"
    );
    for s in &summaries {
        assert_eq!(s["details"]["source"], "127.0.0.1", "{s}");
        let reasons = s["details"]["reasons"].as_object().unwrap();
        assert!(reasons.contains_key("unknown token"), "{s}");
        assert!(reasons.contains_key("missing bearer token"), "{s}");
    }
    let verified = agentmesh_audit::verify_files(
        &agentmesh_audit::log_files(&config.parent().unwrap().join("audit.log")).unwrap(),
    );
    assert!(verified.is_ok(), "{verified:?}");
}

#[tokio::test]
async fn an_enrol_flood_is_limited_on_its_own_and_operators_keep_working() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let agent = TestAgent::connect(&pki, &hub, "edge-01", &edge_dir).await;
    let addr = hub.http;
    let (csr, _key) = mesh_certs::generate_csr("edge-02").unwrap();
    let body = json!({"token": "amj_guess", "agent_id": "edge-02", "csr": csr}).to_string();
    let statuses = flood(500, |_| {
        let body = body.clone();
        async move {
            http::request(addr, "POST", "/api/v1/enroll", None, Some(&body))
                .await
                .status
        }
    })
    .await;
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "the enrolment limiter engaged");

    // The operator's budget is untouched: a command runs at once, not 429.
    let command = json!({"verb": "echo", "args": {"message": "still here"}, "wait": true});
    let r = http::request(
        addr,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&command.to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["stdout"], "still here\n");

    agent.stop().await;
    let config = hub.config_path.clone();
    hub.stop().await;
    let records = audit_records(&config);
    let about_enrolment = records
        .iter()
        .filter(|r| {
            r["kind"] == "unauthenticated_failures"
                || (r["kind"] == "auth_failed" && r["details"]["credential"] == "join_token")
                || r["kind"] == "rate_limited"
        })
        .count();
    assert!(
        (1..=10).contains(&about_enrolment),
        "{about_enrolment} records for 500 attempts"
    );
}

#[tokio::test]
async fn refused_handshakes_are_aggregated_per_source() {
    init_logging();
    let pki = Pki::new();
    let hub = TestHub::start(&pki, &[]).await;
    // Certificates from the right CA, but never enrolled: refused after the upgrade.
    let (stranger, _) = pki.agent("stranger");
    for _ in 0..100 {
        if let Ok(mut c) = raw::connect(hub.hub, pki.ca.cert_pem(), &stranger).await {
            let _ = c.close_code(agentmesh_e2e::PATIENCE).await;
        }
    }
    assert_eq!(
        hub.backend().metrics.hub_rejected_count("pin_not_enrolled"),
        100
    );
    let config = hub.config_path.clone();
    hub.stop().await;
    let records = audit_records(&config);
    let rejected = records
        .iter()
        .filter(|r| r["kind"] == "agent_rejected")
        .count();
    let summaries: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "unauthenticated_failures")
        .collect();
    assert!(
        (1..=10).contains(&(rejected + summaries.len())),
        "{rejected} + {} records for 100 refusals",
        summaries.len()
    );
    let counted: u64 = summaries
        .iter()
        .map(|r| {
            r["details"]["reasons"]["hub: pin_not_enrolled"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(counted + rejected as u64 >= 100, "{counted}");
}
