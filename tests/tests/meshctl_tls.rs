//! `meshctl --ca` through the shipped nginx front door (https, a certificate from the mesh
//! CA): the right CA works, none is refused before connecting, a wrong one fails the handshake.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::VIEWER_TOKEN;
use agentmesh_e2e::meshctl::{home, meshctl, meshctl_fleet};
use agentmesh_e2e::nginx::{self, Nginx};
use agentmesh_e2e::Pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_front_door_with_the_ca_from_ca() {
    let Some(bin) = nginx::binary() else {
        return; // the reason is printed; AGENTMESH_REQUIRE_EXTERNAL=1 panics instead
    };
    let fleet = meshctl_fleet(&[("web-1", "web")]).await;
    let _certs = nginx::front_door_certs(&fleet.pki);
    let front = Nginx::start(&bin, fleet.pki.path(), fleet.hub.hub, fleet.hub.http).await;
    let url = format!("https://{}", front.listen);
    let home = home(&fleet);
    let ca = fleet.pki.path().join("ca/ca.pem");

    let run = meshctl(
        Some(&url),
        Some(VIEWER_TOKEN),
        &home,
        &[],
        &["agents", "--ca", ca.to_str().unwrap()],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["count"], 1, "{run:?}");

    let run = meshctl(Some(&url), Some(VIEWER_TOKEN), &home, &[], &["agents"]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("needs --ca"), "{run:?}");

    let other = Pki::new();
    let wrong = other.path().join("ca/ca.pem");
    let env = [("AGENTMESH_CA", wrong.to_str().unwrap())];
    let run = meshctl(Some(&url), Some(VIEWER_TOKEN), &home, &env, &["agents"]).await;
    assert_eq!(run.code, Some(5), "{run:?}");
    assert!(run.stderr.contains("TLS"), "{run:?}");
}
