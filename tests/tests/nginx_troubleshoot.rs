//! The rows of the troubleshooting table in `nginx/README.md`, provoked with real nginx: each
//! test breaks the shipped config (or the backend's) the way an operator might and checks
//! the sign the README tells them to look for — nginx's error log, the hub's refusal reason
//! (the `reason=` of its "hub connection refused" log line, counted in the metrics) and
//! what the agent reports. Skipped without nginx unless AGENTMESH_REQUIRE_EXTERNAL=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use agentmesh_e2e::backend::HubOptions;
use agentmesh_e2e::nginx::{self, Nginx};
use agentmesh_e2e::{agent, eventually, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use mesh_certs::Issued;

/// A hub behind nginx (broken by `edit`), and one agent dialling nginx: nginx checked
/// against the CA, the hub's key pinned (`server_pins`), as `nginx/README.md` sets it up.
struct Setup {
    pki: Pki,
    hub: TestHub,
    nginx: Nginx,
    agent: TestAgent,
}

async fn setup(
    options: HubOptions,
    trust_nginx: bool,
    edit: &dyn Fn(String, SocketAddr) -> String,
) -> Option<Setup> {
    init_logging();
    let bin: PathBuf = nginx::binary()?;
    let pki = Pki::new();
    let (proxy, _front): (Issued, Issued) = nginx::front_door_certs(&pki);
    let (edge, edge_dir) = pki.agent("edge-01");
    let enrolled = [("edge-01", edge.pin.as_str())];
    let hub = if trust_nginx {
        nginx::hub_behind_nginx(&pki, &enrolled, &proxy, options).await
    } else {
        TestHub::start_with(&pki, &enrolled, options).await
    };
    let hub_addr = hub.hub;
    let nginx =
        Nginx::start_edited(&bin, pki.path(), hub.hub, hub.http, &|s| edit(s, hub_addr)).await;
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        nginx.listen,
        &[&hub.server_pin],
        "",
    );
    let agent = TestAgent::start(cfg);
    Some(Setup {
        pki,
        hub,
        nginx,
        agent,
    })
}

impl Setup {
    async fn nginx_logged(&self, line: &str) {
        eventually(&format!("nginx error log: {line}"), PATIENCE, || async {
            self.nginx.errors().contains(line)
        })
        .await;
    }

    async fn agent_reported(&self, needle: &str) {
        eventually(&format!("agent error: {needle}"), PATIENCE, || async {
            self.agent
                .state
                .snapshot()
                .last_error
                .is_some_and(|e| e.contains(needle))
        })
        .await;
    }

    async fn hub_refused(&self, reason: &str) {
        eventually(&format!("hub refusal {reason}"), PATIENCE, || async {
            self.hub.backend().metrics.hub_rejected_count(reason) > 0
        })
        .await;
    }

    async fn stop(self) {
        self.agent.stop().await;
        drop(self.nginx);
        self.hub.stop().await;
        drop(self.pki);
    }
}

fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn hub_on_the_wrong_port_is_a_502() {
    let nothing = closed_port();
    let Some(s) = setup(HubOptions::default(), true, &|conf, hub| {
        conf.replace(&format!("https://{hub}"), &format!("https://{nothing}"))
    })
    .await
    else {
        return;
    };
    s.nginx_logged("(111: Connection refused) while connecting to upstream")
        .await;
    s.agent_reported("502").await;
    s.stop().await;
}

#[tokio::test]
async fn the_ws_location_pointing_at_the_plain_http_api_is_a_502() {
    let Some(s) = setup(HubOptions::default(), true, &|conf, hub| {
        let api = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("server 127.0.0.1:"))
            .map(|p| p.trim_end_matches(';').to_owned())
            .unwrap();
        conf.replace(
            &format!("https://{hub}"),
            &format!("https://127.0.0.1:{api}"),
        )
    })
    .await
    else {
        return;
    };
    s.nginx_logged("wrong version number").await;
    s.agent_reported("502").await;
    s.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_hub_tls_port_is_refused_as_not_tls() {
    let Some(s) = setup(HubOptions::default(), true, &|conf, hub| {
        conf.replace(&format!("https://{hub}"), &format!("http://{hub}"))
    })
    .await
    else {
        return;
    };
    s.hub_refused("not_tls").await;
    s.agent_reported("invalid HTTP version").await;
    s.nginx_logged(
        "upstream sent no valid HTTP/1.0 header while reading response header from upstream",
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn missing_upgrade_headers_are_refused_by_the_hub() {
    let Some(s) = setup(HubOptions::default(), true, &|conf, _| {
        conf.lines()
            .filter(|l| {
                !l.contains("proxy_set_header Upgrade")
                    && !l.contains("proxy_set_header Connection     $agentmesh")
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await
    else {
        return;
    };
    s.hub_refused("websocket_upgrade").await;
    s.nginx_logged(
        "upstream prematurely closed connection while reading response header from upstream",
    )
    .await;
    s.agent_reported("502").await;
    s.stop().await;
}

#[tokio::test]
async fn a_client_certificate_not_forwarded_is_refused() {
    let Some(s) = setup(HubOptions::default(), true, &|conf, _| {
        conf.replace(
            "proxy_set_header X-Agentmesh-Client-Cert $ssl_client_escaped_cert;",
            "",
        )
    })
    .await
    else {
        return;
    };
    s.hub_refused("proxy_without_client_cert").await;
    s.agent_reported("Connection reset without closing handshake")
        .await;
    assert!(!s.hub.is_connected("edge-01"));
    s.stop().await;
}

#[tokio::test]
async fn nginx_not_trusted_as_a_proxy_is_4001_for_nginx_own_identity() {
    let Some(s) = setup(HubOptions::default(), false, &|conf, _| conf).await else {
        return;
    };
    s.hub_refused("pin_not_enrolled").await;
    s.agent_reported("4001").await;
    s.stop().await;
}

#[tokio::test]
async fn a_proxy_timeout_shorter_than_the_heartbeat_makes_agents_reconnect() {
    let options = HubOptions {
        heartbeat_secs: 3,
        ..HubOptions::default()
    };
    let Some(s) = setup(options, true, &|conf, _| {
        conf.replace(
            "proxy_read_timeout              3600s;",
            "proxy_read_timeout 1s;",
        )
    })
    .await
    else {
        return;
    };
    s.nginx_logged(
        "upstream timed out (110: Connection timed out) while proxying upgraded connection",
    )
    .await;
    eventually("the agent reconnected", PATIENCE, || async {
        s.agent.state.snapshot().connects >= 2
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_front_door_tls_port_is_400() {
    let Some(s) = setup(HubOptions::default(), true, &|conf, _| conf).await else {
        return;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.nginx.listen)
        .await
        .unwrap();
    tcp.write_all(b"GET /ws/agent HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("The plain HTTP request was sent to HTTPS port"),
        "{answer}"
    );
    s.nginx_logged("client sent plain HTTP request to HTTPS port")
        .await;
    s.stop().await;
}
