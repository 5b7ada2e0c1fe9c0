//! The production layout at fleet scale: real nginx with the shipped `nginx/agentmesh.conf`
//! in front of the hub and the API, default limits, hundreds of in-process agents each
//! reaching nginx from its own loopback address (through a relay), a backend restart, and
//! noisy agents that must be throttled alone. Timings are printed, never asserted.
//! Skipped (with a message) when nginx is not installed, unless AGENTMESH_REQUIRE_EXTERNAL=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use agentmesh_e2e::backend::{HubOptions, VIEWER_TOKEN};
use agentmesh_e2e::nginx::{self, client_ip, relay, Nginx};
use agentmesh_e2e::{agent, eventually, http, init_logging, raw, Pki, TestAgent, TestHub};
use mesh_certs::Issued;

const FLEET: usize = 300;
/// Generous: a slow, shared 2-core machine. Nothing here asserts how fast.
const FLEET_PATIENCE: Duration = Duration::from_secs(300);

/// Default `[limits]` behind nginx.
async fn hub_behind_nginx(pki: &Pki, enrolled: &[(&str, &str)], proxy: &Issued) -> TestHub {
    let options = HubOptions {
        limits: String::new(),
        ..HubOptions::default()
    };
    nginx::hub_behind_nginx(pki, enrolled, proxy, options).await
}

/// Waits until every id is connected; returns when each was first seen, from `start`.
async fn all_connected(hub: &TestHub, ids: &[String], start: Instant) -> Vec<Duration> {
    let mut seen: HashMap<&str, Duration> = HashMap::new();
    let deadline = start + FLEET_PATIENCE;
    while seen.len() < ids.len() {
        for id in ids {
            if !seen.contains_key(id.as_str()) && hub.is_connected(id) {
                seen.insert(id, start.elapsed());
            }
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} agents connected",
            seen.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ids.iter().map(|id| seen[id.as_str()]).collect()
}

fn summary(what: &str, times: &[Duration]) {
    let n = times.len().max(1) as f64;
    let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / n;
    let max = times.iter().map(Duration::as_secs_f64).fold(0.0, f64::max);
    eprintln!(
        "{what}: {} agents, mean {mean:.2}s, max {max:.2}s",
        times.len()
    );
}

/// How one hand-driven connection through nginx ended.
#[derive(Debug)]
enum Attempt {
    Welcome,
    NginxRefused(String),
    HubClosed(u16, String),
}

/// Says `hello` as `id` through nginx and answers the hub's challenge with `cert`'s key, as
/// the agent behind nginx does.
async fn attempt(front: std::net::SocketAddr, pki: &Pki, id: &str, cert: &Issued) -> Attempt {
    let mut c = match raw::connect(front, pki.ca.cert_pem(), cert).await {
        Ok(c) => c,
        Err(e) => return Attempt::NginxRefused(e),
    };
    c.send_json(&raw::hello(id, 1)).await;
    match c.next_or_close(Duration::from_secs(20)).await {
        Ok(v) if v["type"] == "welcome" => match c.answer_challenge(&v, id, &cert.key_pem).await {
            Ok(()) => Attempt::Welcome,
            Err((code, reason)) => Attempt::HubClosed(code, reason),
        },
        Ok(v) => panic!("unexpected frame {v}"),
        Err((code, reason)) => Attempt::HubClosed(code, reason),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_connects_through_nginx_comes_back_after_a_restart_and_noisy_agents_are_throttled_alone(
) {
    init_logging();
    let Some(nginx_bin) = nginx::binary() else {
        return;
    };
    let pki = Pki::new();
    let (proxy, _front) = nginx::front_door_certs(&pki);
    let mut issued: Vec<(String, Issued, std::path::PathBuf)> = (0..FLEET)
        .map(|i| {
            let id = format!("host-{i:03}");
            let (cert, dir) = pki.agent(&id);
            (id, cert, dir)
        })
        .collect();
    for id in ["noisy-01", "noisy-02"] {
        let (cert, dir) = pki.agent(id);
        issued.push((id.to_owned(), cert, dir));
    }
    let enrolled: Vec<(&str, &str)> = issued
        .iter()
        .map(|(id, c, _)| (id.as_str(), c.pin.as_str()))
        .collect();
    let mut hub = hub_behind_nginx(&pki, &enrolled, &proxy).await;
    let front_door = Nginx::start(&nginx_bin, pki.path(), hub.hub, hub.http).await;

    // Every agent reaches nginx from its own address, checks nginx's certificate against the
    // CA and pins the hub's key (which signs `welcome` behind nginx).
    let ids: Vec<String> = issued[..FLEET].iter().map(|(id, ..)| id.clone()).collect();
    let start = Instant::now();
    let mut agents = Vec::new();
    for (i, (id, _, dir)) in issued[..FLEET].iter().enumerate() {
        let via = relay(front_door.listen, vec![client_ip(i)]).await;
        let cfg = agent::write_config(pki.path(), id, dir, via, &[&hub.server_pin], "");
        agents.push(TestAgent::start(cfg));
    }
    eprintln!(
        "{FLEET} agents started in {:.2}s",
        start.elapsed().as_secs_f64()
    );
    let times = all_connected(&hub, &ids, start).await;
    summary("first connect through nginx", &times);
    let metrics = &hub.backend().metrics;
    assert_eq!(
        metrics.hub_rejected_count("ip_rate_limited"),
        0,
        "nginx's address is not limited, and each agent connected once from its own"
    );
    // The hub saw each agent's own address, not nginx's.
    for (i, id) in ids.iter().enumerate().step_by(37) {
        let addr = hub.backend().registry.get(id).unwrap().remote_addr.unwrap();
        assert!(
            addr.starts_with(&format!("{}:", client_ip(i))),
            "{id}: {addr}"
        );
    }
    // And the API lists them all, through the same front door.
    let listed = http::get_tls(
        front_door.listen,
        pki.ca.cert_pem(),
        "/api/v1/agents?connected=true",
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(
        listed.json()["agents"].as_array().map(Vec::len),
        Some(FLEET)
    );

    // Noisy agents: one hammering from one address (nginx's limit_req and the hub's limits
    // bite), one from ever new addresses (only the hub's per-identity limit can tell).
    let sessions: Vec<Option<String>> = ids
        .iter()
        .map(|id| hub.backend().registry.get(id).unwrap().session_id)
        .collect();
    let one_address = relay(front_door.listen, vec![IpAddr::from([127, 2, 0, 1])]).await;
    let rotating: Vec<IpAddr> = (0..40).map(|n| IpAddr::from([127, 3, 0, n + 1])).collect();
    let many_addresses = relay(front_door.listen, rotating).await;
    let (mut nginx_refused, mut hub_refused, mut admitted) = (0, 0, 0);
    for (via, (id, cert, _)) in [
        (one_address, &issued[FLEET]),
        (many_addresses, &issued[FLEET + 1]),
    ] {
        // Rounds of concurrent attempts: over any burst however slow the machine is.
        let mut results = Vec::new();
        for _ in 0..2 {
            let round = (0..20).map(|_| attempt(via, &pki, id, cert));
            results.extend(futures_util::future::join_all(round).await);
        }
        for result in results {
            match result {
                Attempt::Welcome => admitted += 1,
                Attempt::NginxRefused(e) => {
                    assert!(e.contains("429"), "{e}");
                    nginx_refused += 1
                }
                // 4003: a concurrent attempt of the same identity replaced this one.
                Attempt::HubClosed(4003, _) => admitted += 1,
                Attempt::HubClosed(code, reason) => {
                    assert_eq!(code, 1013, "{reason}");
                    hub_refused += 1
                }
            }
        }
    }
    eprintln!("noisy agents: {admitted} admitted, {nginx_refused} refused by nginx (429), {hub_refused} closed by the hub (1013)");
    assert!(nginx_refused > 0, "nginx limits one address");
    let log = front_door.errors();
    assert!(
        log.contains("limiting requests, excess:") && log.contains("by zone \"agentmesh_ws_req\""),
        "nginx logs its refusals"
    );
    assert!(
        hub.backend()
            .metrics
            .hub_rejected_count("identity_rate_limited")
            > 0,
        "the hub limits one identity on rotating addresses"
    );
    assert!(admitted > 0);
    for (id, before) in ids.iter().zip(&sessions) {
        let now = hub.backend().registry.get(id).unwrap();
        assert!(now.connected, "{id} stayed connected");
        assert_eq!(&now.session_id, before, "{id} was never disconnected");
    }

    // A backend restart: every agent comes back through nginx.
    let start = Instant::now();
    hub.restart(&pki).await;
    let up = start.elapsed();
    let times = all_connected(&hub, &ids, start).await;
    summary("back after a backend restart (from the kill)", &times);
    let since_up: Vec<Duration> = times.iter().map(|t| t.saturating_sub(up)).collect();
    summary(
        "back after a backend restart (from the new backend up)",
        &since_up,
    );
    eprintln!(
        "after restart: handshake refusals paced={} ip={} identity={}",
        hub.backend().metrics.hub_rejected_count("admission_paced"),
        hub.backend().metrics.hub_rejected_count("ip_rate_limited"),
        hub.backend()
            .metrics
            .hub_rejected_count("identity_rate_limited")
    );
    assert_eq!(
        hub.backend().metrics.hub_rejected_count("ip_rate_limited"),
        0
    );

    for a in agents {
        a.stop().await;
    }
    drop(front_door);
    hub.stop().await;
}

#[tokio::test]
async fn enrolment_limits_key_on_the_client_nginx_forwards_and_metrics_stay_local() {
    init_logging();
    let Some(nginx_bin) = nginx::binary() else {
        return;
    };
    let pki = Pki::new();
    let (proxy, _front) = nginx::front_door_certs(&pki);
    let hub = hub_behind_nginx(&pki, &[], &proxy).await;
    let front_door = Nginx::start(&nginx_bin, pki.path(), hub.hub, hub.http).await;
    let body = r#"{"token":"amj_not_a_real_token","agent_id":"edge-01","csr":"x"}"#;
    let post = |from: IpAddr| {
        let pki = &pki;
        let listen = front_door.listen;
        async move {
            let via = relay(listen, vec![from]).await;
            let tls = raw::tls(via, pki.ca.cert_pem(), None).await.unwrap();
            http::exchange(tls, via, "POST", "/api/v1/enroll", None, Some(body)).await
        }
    };
    // One client guessing join tokens runs into the backend's per-address enrolment limit
    // (2/s, burst 20), under nginx's own API burst (40)…
    let guesser = client_ip(1);
    let mut limited = false;
    for _ in 0..200 {
        let r = post(guesser).await;
        if r.status == 429 && r.body.contains("rate_limited") {
            limited = true;
            break;
        }
    }
    assert!(limited, "the guesser was limited by the backend");
    // …while another client behind the same nginx is not.
    let other = post(client_ip(2)).await;
    assert_ne!(other.status, 429, "{}", other.body);

    // /metrics: from the nginx host only.
    let outside = {
        let via = relay(front_door.listen, vec![client_ip(3)]).await;
        let tls = raw::tls(via, pki.ca.cert_pem(), None).await.unwrap();
        http::exchange(tls, via, "GET", "/metrics", None, None).await
    };
    assert_eq!(outside.status, 403, "{}", outside.body);
    let local = http::get_tls(front_door.listen, pki.ca.cert_pem(), "/metrics", None).await;
    assert_eq!(local.status, 200, "{}", local.body);
    eventually(
        "nginx logged the refusal",
        agentmesh_e2e::PATIENCE,
        || async { front_door.errors().contains("access forbidden by rule") },
    )
    .await;
    drop(front_door);
    hub.stop().await;
}
