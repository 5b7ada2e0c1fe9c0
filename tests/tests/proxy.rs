//! The forwarded-certificate header: honoured only from a pinned trusted proxy, and even then
//! the forwarded certificate is verified like a direct one — a foreign CA, an unenrolled pin
//! or a revoked agent forwarded by the trusted proxy is refused, never trusted blindly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{HubOptions, ADMIN_TOKEN};
use agentmesh_e2e::{eventually, http, init_logging, raw, Pki, TestHub, PATIENCE};
use mesh_certs::Issued;
use serde_json::Value;

/// The PEM as nginx's `$ssl_client_escaped_cert` sends it.
fn escaped(pem: &str) -> String {
    pem.replace('\n', "%0A")
        .replace(' ', "%20")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// A hub trusting `proxy`'s pin as a forwarding proxy, with `agents` enrolled.
async fn hub_behind(pki: &Pki, proxy: &Issued, agents: &[(&str, &str)]) -> TestHub {
    let options = HubOptions {
        extra: format!("[hub]\ntrusted_proxy_pins = [\"{}\"]\n", proxy.pin),
        ..HubOptions::default()
    };
    TestHub::start_with(pki, agents, options).await
}

/// The proxy connects with its own certificate, forwards `forwarded`, says hello as `id` and
/// answers the hub's challenge with `forwarded`'s key, as the agent behind a real proxy does:
/// Ok((client, welcome)) or Err((close code, reason)) — code 0 when refused before a close
/// frame.
async fn via_proxy(
    hub: &TestHub,
    pki: &Pki,
    proxy: &Issued,
    forwarded: &Issued,
    id: &str,
) -> Result<(raw::RawClient, Value), (u16, String)> {
    let headers = [("x-agentmesh-client-cert", escaped(&forwarded.cert_pem))];
    let mut c = raw::connect_with_headers(hub.hub, pki.ca.cert_pem(), proxy, &headers)
        .await
        .map_err(|e| (0, e))?;
    // A refused identity may be closed right after the upgrade, before the hello lands.
    let _ = c.send_text(&raw::hello(id, 1).to_string()).await;
    match c.next_or_close(PATIENCE).await? {
        v if v["type"] == "welcome" => {
            c.answer_challenge(&v, id, &forwarded.key_pem).await?;
            Ok((c, v))
        }
        other => Err((0, other.to_string())),
    }
}

#[tokio::test]
async fn a_trusted_proxy_forwarding_an_enrolled_certificate_is_accepted() {
    // The positive control for the refusals below: the same path does let a good one in.
    init_logging();
    let pki = Pki::new();
    let (proxy, _) = pki.agent("front-door");
    let (edge, _) = pki.agent("edge-01");
    let hub = hub_behind(&pki, &proxy, &[("edge-01", &edge.pin)]).await;
    let (client, welcome) = via_proxy(&hub, &pki, &proxy, &edge, "edge-01")
        .await
        .expect("welcome");
    // A forwarded certificate is proven held before the session is attached.
    assert_eq!(welcome["challenge_follows"], true, "{welcome}");
    hub.attached("edge-01", &welcome).await;
    let view = hub.backend().registry.get("edge-01").unwrap();
    assert_eq!(view.pin.as_deref(), Some(edge.pin.as_str()));
    drop(client);
    hub.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_forwarding_a_foreign_ca_certificate_is_refused() {
    init_logging();
    let pki = Pki::new();
    let (proxy, _) = pki.agent("front-door");
    // Same id, enrolled pin and all: only the issuing CA is wrong.
    let (foreign, _) = pki.foreign_agent("edge-01");
    let hub = hub_behind(&pki, &proxy, &[("edge-01", &foreign.pin)]).await;
    let outcome = via_proxy(&hub, &pki, &proxy, &foreign, "edge-01").await;
    assert!(
        outcome.is_err(),
        "a foreign-CA certificate got in: {outcome:?}"
    );
    eventually("unknown_ca counted", PATIENCE, || async {
        hub.backend().metrics.hub_rejected_count("unknown_ca") == 1
    })
    .await;
    assert!(!hub.is_connected("edge-01"));
    hub.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_forwarding_an_unenrolled_certificate_is_refused() {
    init_logging();
    let pki = Pki::new();
    let (proxy, _) = pki.agent("front-door");
    let (enrolled, _) = pki.agent("edge-01");
    // Our CA, right id, but a key that was never enrolled.
    let (stranger, _) = pki.agent("edge-01");
    let hub = hub_behind(&pki, &proxy, &[("edge-01", &enrolled.pin)]).await;
    let (code, reason) = via_proxy(&hub, &pki, &proxy, &stranger, "edge-01")
        .await
        .expect_err("an unenrolled certificate got in");
    assert_eq!(code, 4001, "{reason}");
    assert_eq!(
        hub.backend().metrics.hub_rejected_count("pin_not_enrolled"),
        1
    );
    assert!(!hub.is_connected("edge-01"));
    hub.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_forwarding_a_revoked_certificate_is_refused() {
    init_logging();
    let pki = Pki::new();
    let (proxy, _) = pki.agent("front-door");
    let (edge, _) = pki.agent("edge-01");
    let hub = hub_behind(&pki, &proxy, &[("edge-01", &edge.pin)]).await;
    let r = http::request(
        hub.http,
        "DELETE",
        "/api/v1/agents/edge-01",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outcome = via_proxy(&hub, &pki, &proxy, &edge, "edge-01").await;
    assert!(
        outcome.is_err(),
        "a revoked certificate got in: {outcome:?}"
    );
    if let Err((code, reason)) = &outcome {
        // Refused as revoked (4004), or before the session at all; never as a session.
        assert!(
            matches!(code, 0 | 4004 | 4001),
            "unexpected close {code}: {reason}"
        );
    }
    assert!(hub.backend().metrics.hub_rejected_count("revoked") >= 1);
    assert!(!hub.is_connected("edge-01"));
    hub.stop().await;
}

#[tokio::test]
async fn a_forwarded_certificate_header_from_a_non_proxy_is_ignored() {
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let (victim, _) = pki.agent("edge-02");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin), ("edge-02", &victim.pin)]).await;
    // edge-01 claims to be forwarding edge-02's certificate: the header must not count.
    let forged = vec![("x-agentmesh-client-cert", escaped(&victim.cert_pem))];
    let mut client = raw::connect_with_headers(hub.hub, pki.ca.cert_pem(), &edge, &forged)
        .await
        .unwrap();
    client.send_json(&raw::hello("edge-02", 1)).await;
    let (code, reason) = client.close_code(PATIENCE).await.expect("closed");
    assert_eq!(code, 4001, "{reason}");
    assert!(!hub.is_connected("edge-02"));
    hub.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_must_forward_a_certificate() {
    let pki = Pki::new();
    let (proxy, _) = pki.agent("front-door");
    let hub = hub_behind(&pki, &proxy, &[]).await;
    let _ = raw::connect(hub.hub, pki.ca.cert_pem(), &proxy).await;
    eventually("proxy without header refused", PATIENCE, || async {
        hub.backend()
            .metrics
            .hub_rejected_count("proxy_without_client_cert")
            == 1
    })
    .await;
    hub.stop().await;
}
