//! Issue 10, identities in step across replicas: two replicas on one PostgreSQL store and a
//! real nats-server. An agent enrolled (join token, admin pin) or renewed through one
//! replica is admitted by the other, a pin retired on one is refused by the other, labels set
//! on one scope tokens on the other, and a lost announcement is made up for (the hub looks an
//! unknown pin up in the store; a reconnected NATS link reloads everything).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::ADMIN_TOKEN;
use agentmesh_e2e::cluster::{ClusterBase, HubCluster};
use agentmesh_e2e::fleet::{join_token, run, VERBS};
use agentmesh_e2e::{agent, eventually, http, raw, TestAgent, TestHub, PATIENCE};
use backend_agent::auth::token_sha256_hex;
use backend_agent::registry::IdentityRejection;
use mesh_certs::Issued;
use serde_json::{json, Value};

/// An operator token limited to agents labelled `region = "us"` (on every replica).
const US_OPS: &str = "amt_test_us_operator_token";

/// Two replicas `r0`, `r1` with nothing enrolled, both knowing the `us-ops` token; `None`
/// when nats-server or PostgreSQL is not installed (they panic instead under
/// `AGENTMESH_REQUIRE_EXTERNAL=1`).
async fn mesh() -> Option<HubCluster> {
    let base = ClusterBase::start(0).await?;
    let extra = format!(
        "\n[[tokens]]\nname = \"us-ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n\
         labels = {{ region = \"us\" }}\n",
        token_sha256_hex(US_OPS),
    );
    let m = HubCluster::start_on(base, 2, &extra).await;
    m.wait_peers().await;
    Some(m)
}

async fn post(hub: &TestHub, token: Option<&str>, path: &str, body: Value) -> http::Response {
    http::request(hub.http, "POST", path, token, Some(&body.to_string())).await
}

/// A join token for `id` created through `hub`, redeemed through it with a fresh key.
async fn enrol_with_join_token(hub: &TestHub, id: &str) -> Issued {
    let token = join_token(hub.http, id, 600).await;
    let (csr, key_pem) = mesh_certs::generate_csr(id).unwrap();
    let body = json!({"token": token, "agent_id": id, "csr": csr});
    let r = post(hub, None, "/api/v1/enroll", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    raw::issued(&r.json(), key_pem)
}

/// A real gateway agent for `id` with `identity`, dialling `hub` only.
fn start_agent(m: &HubCluster, hub: &TestHub, id: &str, identity: &Issued) -> TestAgent {
    let dir = m.pki.path().join("redeemed").join(id);
    identity.save(&dir).unwrap();
    let cfg = agent::write_config(m.pki.path(), id, &dir, hub.hub, &[&hub.server_pin], VERBS);
    TestAgent::start(cfg)
}

/// Connects to `hub` with `identity` and says `hello`: the `welcome`, or the close code and
/// reason.
async fn connect(
    hub: &TestHub,
    m: &HubCluster,
    id: &str,
    identity: &Issued,
) -> Result<(), (u16, String)> {
    raw::admitted(hub.hub, m.pki.ca.cert_pem(), identity, id).await
}

fn echo(message: &str) -> Value {
    json!({"verb": "echo", "args": {"message": message}, "wait": true})
}

#[tokio::test]
async fn an_agent_enrolled_through_one_replica_is_admitted_by_the_other() {
    let Some(m) = mesh().await else { return };
    let id = "joined-01";
    let identity = enrol_with_join_token(&m.replicas[0], id).await;
    let r1 = &m.replicas[1];
    eventually("r1 learns the new pin", PATIENCE, || async {
        r1.backend().registry.check_identity(id, &identity.pin) == Ok(())
    })
    .await;
    let agent = start_agent(&m, r1, id, &identity);
    agent.wait_connected(r1, id).await;
    let list = http::get(r1.http, "/api/v1/agents?connected=true", Some(ADMIN_TOKEN)).await;
    assert!(list.body.contains(id), "{}", list.body);
    let resp = run(r1, id, echo("joined")).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["stdout"], "joined\n", "{}", resp.body);
    // Through the replica it was enrolled on, too (routed).
    let resp = run(&m.replicas[0], id, echo("routed")).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
}

#[tokio::test]
async fn a_renewal_through_one_replica_retires_the_old_pin_on_the_other() {
    let Some(m) = mesh().await else { return };
    let id = "renewing-01";
    let (r0, r1) = (&m.replicas[0], &m.replicas[1]);
    let old = enrol_with_join_token(r0, id).await;
    let (mut session, _) = raw::session(r0.hub, m.pki.ca.cert_pem(), &old, id).await;
    let new = session.renew(id).await;
    // The renewed certificate's first session (on r0) completes the renewal there.
    let (_renewed_session, _) = raw::session(r0.hub, m.pki.ca.cert_pem(), &new, id).await;
    let registry = &r1.backend().registry;
    eventually("r1 retires the old pin", PATIENCE, || async {
        registry.check_identity(id, &old.pin) == Err(IdentityRejection::Retired)
    })
    .await;
    let refused = connect(r1, &m, id, &old).await.unwrap_err();
    assert_eq!(refused.0, 4001, "old pin refused by r1: {refused:?}");
    assert!(refused.1.contains("retired"), "{refused:?}");
    connect(r1, &m, id, &new)
        .await
        .expect("the renewed pin is admitted by r1");
}

#[tokio::test]
async fn labels_set_through_one_replica_scope_tokens_on_the_other() {
    let Some(m) = mesh().await else { return };
    let id = "labelled-01";
    let (r0, r1) = (&m.replicas[0], &m.replicas[1]);
    let (issued, dir) = m.pki.agent(id);
    // Enrolled by an admin through r0 (the other enrolment path), connected to r1.
    let body = json!({"agent_id": id, "pin": issued.pin});
    let r = post(r0, Some(ADMIN_TOKEN), "/api/v1/enrollments", body).await;
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let cfg = agent::write_config(m.pki.path(), id, &dir, r1.hub, &[&r1.server_pin], VERBS);
    let agent = TestAgent::start(cfg);
    agent.wait_connected(r1, id).await;
    // Its hello says region=eu: the us-scoped token sees nothing yet.
    let list = http::get(r1.http, "/api/v1/agents", Some(US_OPS)).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(!list.body.contains(id), "{}", list.body);
    let body = json!({"labels": {"region": "us"}}).to_string();
    let path = format!("/api/v1/agents/{id}/labels");
    let r = http::request(r0.http, "PUT", &path, Some(ADMIN_TOKEN), Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("r1's us-scoped token sees the agent", PATIENCE, || async {
        let list = http::get(r1.http, "/api/v1/agents", Some(US_OPS)).await;
        list.status == 200 && list.body.contains(id)
    })
    .await;
    let path = format!("/api/v1/agents/{id}/commands");
    let body = echo("scoped").to_string();
    let resp = http::request(r1.http, "POST", &path, Some(US_OPS), Some(&body)).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["stdout"], "scoped\n", "{}", resp.body);
    // The unscoped operator still reaches it through either replica.
    assert_eq!(run(r0, id, echo("any")).await.status, 200);
}

#[tokio::test]
async fn lost_announcements_are_made_up_for_from_the_store() {
    let Some(mut m) = mesh().await else { return };
    m.base.nats.stop().await;
    let id = "offline-01";
    // Enrolled and labelled through r0 while no announcement can reach r1.
    let identity = enrol_with_join_token(&m.replicas[0], id).await;
    let body = json!({"labels": {"region": "us"}}).to_string();
    let path = format!("/api/v1/agents/{id}/labels");
    let r = http::request(
        m.replicas[0].http,
        "PUT",
        &path,
        Some(ADMIN_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let registry = &m.replicas[1].backend().registry;
    assert_eq!(
        registry.check_identity(id, &identity.pin),
        Err(IdentityRejection::PinNotEnrolled)
    );
    // The hub looks the unknown pin up in the shared store before refusing it.
    connect(&m.replicas[1], &m, id, &identity)
        .await
        .expect("r1 admits a pin it was never told about");
    // The link comes back: every pin, revocation and label is reloaded once.
    m.base.nats.restart().await;
    eventually("r1 reloads the labels set meanwhile", PATIENCE, || async {
        registry
            .scope_labels(id)
            .and_then(|l| l.get("region").cloned())
            == Some("us".into())
    })
    .await;
}
