//! Hub connect limits that see through a proxy, driven by a hand-made "proxy" (a raw client
//! with a pinned proxy certificate that forwards certificates and `X-Real-IP`): the proxy's
//! own address is not limited, the forwarded client is, each agent identity is, and a peer
//! at a proxy address without the proxy certificate is charged after TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::HubOptions;
use agentmesh_e2e::{eventually, init_logging, raw, Pki, TestHub, PATIENCE};
use mesh_certs::Issued;

fn escaped(pem: &str) -> String {
    pem.replace('\n', "%0A")
        .replace(' ', "%20")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// How one connection attempt ended.
enum Outcome {
    /// Admitted (with the `welcome` frame); the session lives as long as the client.
    Welcome(Box<raw::RawClient>, serde_json::Value),
    Closed(u16, String),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Welcome(..) => write!(f, "Welcome"),
            Outcome::Closed(code, reason) => write!(f, "Closed({code}, {reason:?})"),
        }
    }
}

/// Connects as the proxy, forwarding `agent`'s certificate and `client` as X-Real-IP, says
/// `hello` as the agent and answers the hub's challenge with the agent's key (as the agent
/// behind a real proxy does).
async fn via_proxy(
    hub: &TestHub,
    pki: &Pki,
    proxy: &Issued,
    agent: (&str, &Issued),
    client: &str,
) -> Outcome {
    let headers = vec![
        ("x-agentmesh-client-cert", escaped(&agent.1.cert_pem)),
        ("x-real-ip", client.to_owned()),
        ("x-forwarded-for", format!("203.0.113.250, {client}")),
    ];
    let mut c = raw::connect_with_headers(hub.hub, pki.ca.cert_pem(), proxy, &headers)
        .await
        .unwrap();
    c.send_json(&raw::hello(agent.0, 1)).await;
    match c.next_or_close(PATIENCE).await {
        Ok(v) if v["type"] == "welcome" => {
            match c.answer_challenge(&v, agent.0, &agent.1.key_pem).await {
                Ok(()) => Outcome::Welcome(Box::new(c), v),
                Err((code, reason)) => Outcome::Closed(code, reason),
            }
        }
        Ok(v) => panic!("unexpected frame {v}"),
        Err((code, reason)) => Outcome::Closed(code, reason),
    }
}

async fn direct(hub: &TestHub, pki: &Pki, agent: (&str, &Issued)) -> Outcome {
    let mut c = raw::connect(hub.hub, pki.ca.cert_pem(), agent.1)
        .await
        .unwrap();
    c.send_json(&raw::hello(agent.0, 1)).await;
    match c.next_or_close(PATIENCE).await {
        Ok(v) if v["type"] == "welcome" => Outcome::Welcome(Box::new(c), v),
        Ok(v) => panic!("unexpected frame {v}"),
        Err((code, reason)) => Outcome::Closed(code, reason),
    }
}

#[tokio::test]
async fn a_pinned_proxy_is_limited_per_forwarded_client_and_per_identity_not_per_its_address() {
    init_logging();
    let pki = Pki::new();
    let (proxy, _) = pki.agent("front-door");
    let agents: Vec<(String, Issued)> = (0..12)
        .map(|i| {
            let id = format!("edge-{i:02}");
            let (cert, _) = pki.agent(&id);
            (id, cert)
        })
        .collect();
    let enrolled: Vec<(&str, &str)> = agents
        .iter()
        .map(|(id, c)| (id.as_str(), c.pin.as_str()))
        .collect();
    // Tight limits so that a handful of attempts shows each of them.
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 1\nhub_connects_per_ip_burst = 2\n\
                 hub_connects_per_agent_per_sec = 1\nhub_connects_per_agent_burst = 2\n"
            .into(),
        ..HubOptions::default()
    };
    let mut hub = TestHub::start_with(&pki, &enrolled, options).await;
    let text = std::fs::read_to_string(&hub.config_path).unwrap().replace(
        "handshake_timeout_secs",
        &format!(
            "trusted_proxy_pins = [\"{}\"]\ntrusted_proxies = [\"127.0.0.1/32\", \"::1\"]\nhandshake_timeout_secs",
            proxy.pin
        ),
    );
    std::fs::write(&hub.config_path, text).unwrap();
    hub.restart_from_file().await;
    let agent = |i: usize| (agents[i].0.as_str(), &agents[i].1);

    // Ten agents through the proxy, each from its own client address: all get in, although
    // the proxy's own address has a burst of 2.
    let mut sessions = Vec::new();
    for i in 0..10 {
        let client = format!("192.0.2.{}", i + 1);
        match via_proxy(&hub, &pki, &proxy, agent(i), &client).await {
            Outcome::Welcome(c, welcome) => {
                // Attached once the challenge is answered (the forwarded key is held).
                assert_eq!(welcome["challenge_follows"], true, "{welcome}");
                hub.attached(agent(i).0, &welcome).await;
                sessions.push(c);
            }
            other => panic!("agent {i} from {client}: {other:?}"),
        }
        let view = hub.backend().registry.get(agent(i).0).unwrap();
        let addr = view.remote_addr.unwrap_or_default();
        assert!(
            addr.starts_with(&format!("{client}:")),
            "the hub records the forwarded client, not the proxy: {addr}"
        );
    }
    assert_eq!(
        hub.backend().metrics.hub_rejected_count("ip_rate_limited"),
        0
    );

    // One forwarded client address reconnecting fast is limited (per address, after TLS).
    // Concurrent attempts: over the burst however slow the machine is.
    let attempts =
        [10, 11, 10, 11, 10, 11].map(|i| via_proxy(&hub, &pki, &proxy, agent(i), "198.51.100.7"));
    let outcomes = futures_util::future::join_all(attempts).await;
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Closed(1013, r) if r.contains("198.51.100.7"))),
        "{outcomes:?}"
    );
    assert!(hub.backend().metrics.hub_rejected_count("ip_rate_limited") >= 1);

    // One identity reconnecting from ever new addresses is limited per identity.
    let addresses: Vec<String> = (0..5).map(|n| format!("2001:db8:{n}::1")).collect();
    let attempts = addresses
        .iter()
        .map(|a| via_proxy(&hub, &pki, &proxy, agent(0), a));
    let outcomes = futures_util::future::join_all(attempts).await;
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Closed(1013, r) if r.contains("per-identity"))),
        "{outcomes:?}"
    );
    assert!(
        hub.backend()
            .metrics
            .hub_rejected_count("identity_rate_limited")
            >= 1
    );
    // The others were never disturbed.
    for i in 1..10 {
        assert!(hub.is_connected(agent(i).0), "agent {i}");
    }

    // From the proxy's address but without the proxy certificate: charged after TLS, on the
    // peer's own address (127.0.0.1), burst 2.
    let before = hub.backend().metrics.hub_rejected_count("ip_rate_limited");
    let attempts = [1, 2, 3, 4].map(|i| direct(&hub, &pki, agent(i)));
    let direct_outcomes = futures_util::future::join_all(attempts).await;
    assert!(
        direct_outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Closed(1013, r) if r.contains("127.0.0.1"))),
        "{direct_outcomes:?}"
    );
    eventually("the direct peer was charged", PATIENCE, || async {
        hub.backend().metrics.hub_rejected_count("ip_rate_limited") > before
    })
    .await;
    hub.stop().await;
}

#[tokio::test]
async fn a_proxy_address_without_a_proxy_pin_is_refused_at_start() {
    let pki = Pki::new();
    let options = HubOptions {
        extra: String::new(),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[], options).await;
    let text = std::fs::read_to_string(&hub.config_path).unwrap().replace(
        "handshake_timeout_secs",
        "trusted_proxies = [\"127.0.0.1\"]\nhandshake_timeout_secs",
    );
    let path = hub.config_path.clone();
    hub.stop().await;
    std::fs::write(&path, text).unwrap();
    let err = backend_agent::config::BackendConfig::load_with_env(&path, std::iter::empty())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hub.trusted_proxies") && err.contains("trusted_proxy_pins"),
        "{err}"
    );
}
