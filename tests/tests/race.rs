//! Real parallelism for the command state machine's compare-and-set: a multi-thread runtime
//! (the other e2e tests share one current-thread runtime, where these races cannot happen)
//! races cancel against the dispatch of held commands and against results, late ones
//! included. Whatever wins, a command ends in one final state that nothing overwrites, and a
//! command reported cancelled before dispatch never reaches the agent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use agentmesh_e2e::backend::{HubOptions, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::raw::RawClient;
use agentmesh_e2e::{http, init_logging, raw, Pki, TestHub, PATIENCE};
use serde_json::{json, Value};

const N: usize = 20;

fn options() -> HubOptions {
    HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 0\nagent_commands_per_sec = 0\n".into(),
        ..HubOptions::default()
    }
}

async fn post(hub: &TestHub, body: Value) -> String {
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["command_id"].as_str().unwrap().to_owned()
}

async fn cancel(http_addr: std::net::SocketAddr, id: String) -> (String, Option<String>) {
    let r = http::request(
        http_addr,
        "DELETE",
        &format!("/api/v1/commands/{id}"),
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let status = r.json()["status"].as_str().map(str::to_owned);
    (id, status)
}

async fn status_of(hub: &TestHub, id: &str) -> String {
    let r = http::get(
        hub.http,
        &format!("/api/v1/commands/{id}"),
        Some(VIEWER_TOKEN),
    )
    .await;
    r.json()["status"].as_str().unwrap().to_owned()
}

fn result(id: &str, status: &str) -> Value {
    json!({"type": "result", "command_id": id, "status": status, "exit_code": 0,
           "stdout": "raced", "stderr": "", "truncated": false})
}

/// Answers every command frame with `ok` and every cancel frame with a (late) `cancelled`
/// result, until every id in `must` has arrived as a command; returns all commands seen.
async fn answer_until(client: &mut RawClient, must: &HashSet<String>) -> HashSet<String> {
    let mut seen = HashSet::new();
    while !must.is_subset(&seen) {
        let frame = client
            .next_json(PATIENCE)
            .await
            .unwrap_or_else(|| panic!("session ended; still missing {:?}", must.difference(&seen)));
        let id = frame["command_id"].as_str().unwrap_or_default().to_owned();
        match frame["type"].as_str() {
            Some("command") => {
                seen.insert(id.clone());
                client.send_json(&result(&id, "ok")).await;
            }
            Some("cancel") => client.send_json(&result(&id, "cancelled")).await,
            _ => {}
        }
    }
    seen
}

/// A causal barrier instead of a sleep: one more command through the same session. Frames
/// are delivered in order both ways, so once it is final everything sent before it (on
/// either side) has been delivered and handled.
async fn barrier(hub: &TestHub, client: &mut RawClient) -> HashSet<String> {
    let id = post(hub, json!({"verb": "ping"})).await;
    let seen = answer_until(client, &HashSet::from([id.clone()])).await;
    finals(hub, std::slice::from_ref(&id)).await;
    seen
}

/// Polls until every command is final; returns id → status.
async fn finals(hub: &TestHub, ids: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    for id in ids {
        loop {
            let s = status_of(hub, id).await;
            if !matches!(s.as_str(), "pending" | "dispatched" | "running") {
                out.insert(id.clone(), s);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never final: {s}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_racing_the_dispatch_of_held_commands_never_sends_a_cancelled_one() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let hub = TestHub::start_with(&pki, &[("edge-01", &edge.pin)], options()).await;
    // First session only to register the agent's verbs; then it goes offline.
    let (first, _) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    drop(first);
    agentmesh_e2e::eventually("offline", PATIENCE, || async {
        !hub.is_connected("edge-01")
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(post(&hub, json!({"verb": "ping", "queue_ttl_ms": 600_000})).await);
    }
    // Cancel every other one while the agent reconnects and the held queue is flushed.
    let cancels: Vec<_> = ids
        .iter()
        .step_by(2)
        .map(|id| tokio::spawn(cancel(hub.http, id.clone())))
        .collect();
    let (mut client, _) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    let mut said = HashMap::new();
    for c in cancels {
        let (id, status) = c.await.unwrap();
        said.insert(id, status);
    }
    let must: HashSet<String> = ids
        .iter()
        .filter(|id| !matches!(said.get(*id), Some(Some(s)) if s == "cancelled"))
        .cloned()
        .collect();
    let mut received = answer_until(&mut client, &must).await;
    received.extend(barrier(&hub, &mut client).await);
    let first = finals(&hub, &ids).await;
    for id in &ids {
        let fin = &first[id];
        assert!(fin == "ok" || fin == "cancelled", "{id}: {fin}");
        match said.get(id) {
            Some(Some(s)) if s == "cancelled" => {
                assert_eq!(fin, "cancelled", "{id} was reported cancelled");
                assert!(!received.contains(id), "{id} reported cancelled yet sent");
            }
            // Not cancelled (or cancelled after dispatch): the agent got it and answered.
            _ => assert!(
                received.contains(id),
                "{id} ({fin}) never reached the agent"
            ),
        }
    }
    // Final means final: a second look after everything settled agrees.
    assert_eq!(finals(&hub, &ids).await, first);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_racing_a_result_and_a_late_result_leave_one_final_state() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let hub = TestHub::start_with(&pki, &[("edge-01", &edge.pin)], options()).await;
    let (mut client, _) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    let mut ids = Vec::new();
    for _ in 0..N {
        let id = post(&hub, json!({"verb": "ping"})).await;
        // Cancel frames of earlier rounds may come first: answer them late, as `cancelled`.
        loop {
            let frame = client.next_json(PATIENCE).await.expect("command frame");
            let of = frame["command_id"].as_str().unwrap_or_default().to_owned();
            match frame["type"].as_str() {
                Some("cancel") => client.send_json(&result(&of, "cancelled")).await,
                Some("command") if of == id => break,
                _ => panic!("unexpected frame {frame}"),
            }
        }
        // The cancel (on another worker thread) and the agent's result race each other.
        let cancelling = tokio::spawn(cancel(hub.http, id.clone()));
        client.send_json(&result(&id, "ok")).await;
        cancelling.await.unwrap();
        ids.push(id);
    }
    // Every cancel frame gets a late `cancelled` result; each must be ignored as a duplicate.
    barrier(&hub, &mut client).await;
    let first = finals(&hub, &ids).await;
    for id in &ids {
        assert_eq!(first[id], "ok", "{id}: the agent's first result decides");
    }
    let dup = hub
        .backend()
        .metrics
        .results_duplicate
        .load(Ordering::Relaxed);
    eprintln!("{dup} late results ignored as duplicates");
    assert_eq!(finals(&hub, &ids).await, first);
    hub.stop().await;
}
