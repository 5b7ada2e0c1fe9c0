//! The hub's handshake bounds and certificate validity: `handshake_timeout_secs` closes a
//! silent peer, `max_pending_handshakes` drops connections beyond it without queueing, and an
//! expired (or not yet valid) client certificate is refused during TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;

use agentmesh_e2e::backend::HubOptions;
use agentmesh_e2e::{eventually, raw, Pki, TestAgent, TestHub, PATIENCE};
use mesh_certs::Validity;
use time::{Duration as TimeDuration, OffsetDateTime};
use tokio::io::AsyncReadExt;

/// Reads until EOF or error: the hub closed the connection.
async fn closed_by_hub(s: &mut tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_peer_silent_during_the_handshake_is_closed_after_handshake_timeout() {
    let pki = Pki::new();
    let options = HubOptions {
        handshake_timeout_secs: 1,
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[], options).await;
    let mut silent = tokio::net::TcpStream::connect(hub.hub).await.unwrap();
    assert!(
        closed_by_hub(&mut silent).await,
        "the hub kept a silent peer"
    );
    eventually("handshake_timeout counted", PATIENCE, || async {
        hub.backend()
            .metrics
            .hub_rejected_count("handshake_timeout")
            == 1
    })
    .await;
    hub.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_pending_handshakes_are_dropped_not_queued() {
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let options = HubOptions {
        extra: "[hub]\nmax_pending_handshakes = 2\n".into(),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[("edge-01", &edge.pin)], options).await;
    let metrics = hub.backend().metrics.clone();
    // Two silent peers take both handshake slots (the timeout is the default 10 s).
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(hub.hub).await.unwrap());
    }
    eventually("both accepted", PATIENCE, || async {
        metrics.hub_connections_accepted.load(Ordering::Relaxed) >= 2
    })
    .await;
    // The third is dropped at once (closed, not left waiting for a slot).
    let mut third = tokio::net::TcpStream::connect(hub.hub).await.unwrap();
    assert!(closed_by_hub(&mut third).await, "the third was queued");
    assert_eq!(metrics.hub_rejected_count("handshake_capacity"), 1);
    // Slots come back when the silent peers go: a real agent then gets in.
    drop(silent);
    let agent = TestAgent::connect(&pki, &hub, "edge-01", &edge_dir).await;
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_client_certificate_is_refused_during_tls() {
    let pki = Pki::new();
    let now = OffsetDateTime::now_utc();
    let expired = pki
        .ca
        .issue_agent(
            "edge-01",
            Validity {
                not_before: now - TimeDuration::days(10),
                not_after: now - TimeDuration::days(1),
            },
        )
        .unwrap();
    let future = pki
        .ca
        .issue_agent(
            "edge-02",
            Validity {
                not_before: now + TimeDuration::days(1),
                not_after: now + TimeDuration::days(10),
            },
        )
        .unwrap();
    // Both pins enrolled: only the validity period is wrong.
    let hub = TestHub::start(&pki, &[("edge-01", &expired.pin), ("edge-02", &future.pin)]).await;
    let ca = pki.ca.cert_pem().to_owned();
    let outcome = raw::connect(hub.hub, &ca, &expired).await;
    assert!(outcome.is_err(), "an expired certificate got through");
    eventually("expired counted", PATIENCE, || async {
        hub.backend().metrics.hub_rejected_count("expired") == 1
    })
    .await;
    let outcome = raw::connect(hub.hub, &ca, &future).await;
    assert!(outcome.is_err(), "a not-yet-valid certificate got through");
    eventually("not_yet_valid counted", PATIENCE, || async {
        hub.backend().metrics.hub_rejected_count("not_yet_valid") == 1
    })
    .await;
    assert!(!hub.is_connected("edge-01") && !hub.is_connected("edge-02"));
    hub.stop().await;
}
