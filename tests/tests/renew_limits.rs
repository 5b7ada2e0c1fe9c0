//! Issue 7, renewal and join tokens under abuse: a stolen key cannot mint pins (one renewal
//! outstanding, the rest refused with an `error` frame, also after a restart), and a CSR the
//! CA refuses never burns the join token it came with.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;

use agentmesh_e2e::fleet::join_token;
use agentmesh_e2e::{http, init_logging, raw, Pki, TestHub, PATIENCE};
use serde_json::json;

/// A P-384 key whose CSR is signed with SHA-256: it parses, so a pre-check that only reads
/// the key passes, but the CA refuses to sign it.
const P384_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBCjCBkQIBADASMRAwDgYDVQQDDAdlZGdlLTAxMHYwEAYHKoZIzj0CAQYFK4EE
ACIDYgAEz0Bhsyi4/rFzpy1Rhn6XwpfNvzyiYXDLYK7YaCfe4gya8dyS338nHWnJ
nXesJEbCM6bRd6vsO/lc60+BWPwKRtzCph10uScl4ldE1rGOEFi4GeU3HuFgoQVH
n4PjpbkVoAAwCgYIKoZIzj0EAwIDaAAwZQIxAOJXB7Vhxl6q008RCVg7mrFeHwY8
SYD9fBu7EFIWwv+7BgSl7a9UKUKXnh55kctiWgIwPnWQIriscUTw17IVTsPCXSWu
zmEFX2zhTOwkM7McZFDfWgdsCb4jfadA6Y4t6lb6
-----END CERTIFICATE REQUEST-----
";

const FLOOD: usize = 40;

#[tokio::test]
async fn a_renew_flood_gets_one_certificate_and_the_pins_do_not_grow() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let mut hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let (mut c, _) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    for _ in 0..FLOOD {
        let (csr, _key) = mesh_certs::generate_csr("edge-01").unwrap();
        c.send_json(&json!({"type": "renew", "csr": csr})).await;
    }
    let mut renewed = 0;
    let mut refused = Vec::new();
    for _ in 0..FLOOD {
        let answer = c
            .next_json(PATIENCE)
            .await
            .expect("every renew is answered");
        match answer["type"].as_str() {
            Some("renewed") => renewed += 1,
            Some("error") => refused.push(answer["code"].as_str().unwrap().to_owned()),
            _ => panic!("unexpected answer {answer}"),
        }
    }
    assert_eq!(renewed, 1, "refusals: {refused:?}");
    assert!(
        refused
            .iter()
            .all(|c| c == "renewal_outstanding" || c == "renew_busy"),
        "{refused:?}"
    );
    let pins = hub.backend().registry.active_pins("edge-01");
    assert_eq!(pins.len(), 2, "the old pin and one new one: {pins:?}");
    let metrics = &hub.backend().metrics;
    assert_eq!(
        metrics.renewals_refused.load(Ordering::Relaxed),
        (FLOOD - 1) as u64
    );
    drop(c);

    // The limit is stored, not in memory: after a restart the old key still cannot renew.
    hub.restart_from_file().await;
    let (mut c, _) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    let (csr, _key) = mesh_certs::generate_csr("edge-01").unwrap();
    c.send_json(&json!({"type": "renew", "csr": csr})).await;
    let answer = c.next_json(PATIENCE).await.expect("answered");
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "renewal_outstanding", "{answer}");
    assert_eq!(hub.backend().registry.active_pins("edge-01").len(), 2);
    drop(c);

    // Refusals are audited, but a flood is a few records, not one each.
    let config = hub.config_path.clone();
    hub.stop().await;
    let log = std::fs::read_to_string(config.parent().unwrap().join("audit.log")).unwrap();
    let refusals: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| {
            r["kind"] == "renewal_refused"
                || (r["kind"] == "unauthenticated_failures"
                    && r["details"]["source"] == "agent:edge-01")
        })
        .collect();
    assert!(!refusals.is_empty());
    assert!(refusals.len() <= 6, "{refusals:#?}");
}

#[tokio::test]
async fn a_csr_the_ca_refuses_does_not_burn_the_join_token() {
    init_logging();
    let pki = Pki::new();
    let hub = TestHub::start(&pki, &[]).await;
    let token = join_token(hub.http, "edge-05", 600).await;
    let enroll = |csr: String| {
        let body = json!({"token": token, "agent_id": "edge-05", "csr": csr}).to_string();
        async move { http::request(hub.http, "POST", "/api/v1/enroll", None, Some(&body)).await }
    };
    let r = enroll(P384_CSR.to_owned()).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = enroll(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_owned(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    // The token is intact: a good CSR redeems it, once.
    let (csr, _key) = mesh_certs::generate_csr("edge-05").unwrap();
    let r = enroll(csr.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = enroll(csr).await;
    assert_eq!(r.status, 401, "{}", r.body);
    hub.stop().await;
}
