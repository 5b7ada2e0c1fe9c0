//! Issue 10, "two replicas redeeming one join token at the same instant: exactly one
//! succeeds", through two real `backend-agent` processes' APIs on one PostgreSQL store (and a
//! real nats-server). Each round: a fresh join token created through one replica's API, then
//! two enrolment requests redeeming it — each with its own key and CSR (mesh-certs), each from
//! its own loopback address, one to each replica — connected first and released together
//! behind a barrier. Exactly one gets a certificate (for its own key: it connects with it),
//! the other a 401 `unauthorized`. The winner's replica audits `enrolled` with the new pin,
//! the loser's `auth_failed` (`already used`) naming the address it came from, each in its
//! own chain (`replica` in the fleet's audit listing); both chains verify.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use agentmesh_e2e::cluster::{fleet_audit, ProcessCluster, Replica};
use agentmesh_e2e::fleet::join_token;
use agentmesh_e2e::nginx::client_ip;
use agentmesh_e2e::process::audit_verify;
use agentmesh_e2e::{eventually, http, raw, PATIENCE};
use serde_json::{json, Value};
use tokio::sync::Barrier;

/// Rounds, each with a fresh token and agent id.
const ROUNDS: usize = 20;

/// One enrolment request of a round: where it went, where from, and what came back.
struct Attempt {
    replica: usize,
    source: IpAddr,
    key_pem: String,
    response: http::Response,
}

/// Two redemptions of `token` for `id`, attempt k to `apis[k]` from `sources[k]`, each with
/// a key of its own: both connections are open before either request is written, and a
/// barrier releases the two writers together.
async fn race(apis: [SocketAddr; 2], sources: [IpAddr; 2], token: &str, id: &str) -> [Attempt; 2] {
    let barrier = Arc::new(Barrier::new(2));
    let mut tasks = Vec::new();
    for k in 0..2 {
        let (csr, key_pem) = mesh_certs::generate_csr(id).unwrap();
        let body = json!({"token": token, "agent_id": id, "csr": csr}).to_string();
        let (api, source) = (apis[k], sources[k]);
        let stream = http::connect_from(source, api, "POST /api/v1/enroll").await;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response =
                http::exchange(stream, api, "POST", "/api/v1/enroll", None, Some(&body)).await;
            Attempt {
                replica: k,
                source,
                key_pem,
                response,
            }
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    done.try_into().ok().unwrap()
}

/// Whether `records` hold exactly the outcome of one round: `enrolled` (join token, `pin`)
/// only in `winner`'s chain, `auth_failed` (already used, from `loser_source`) only in the
/// other's. `false` while the mirror has not caught up; a record in the wrong chain panics.
fn audited(records: &[Value], winner: usize, pin: &str, loser_source: IpAddr) -> bool {
    let enrolled: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "enrolled" && r["details"]["source"] == "join_token")
        .collect();
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "auth_failed" && r["details"]["credential"] == "join_token")
        .collect();
    let (win, lose) = (format!("r{winner}"), format!("r{}", 1 - winner));
    for r in &enrolled {
        assert_eq!(r["replica"], win.as_str(), "enrolled where it won: {r}");
        assert_eq!(r["details"]["pin"], pin, "{r}");
    }
    for r in &refused {
        assert_eq!(r["replica"], lose.as_str(), "refused where it lost: {r}");
        assert_eq!(r["details"]["reason"], "already used", "{r}");
        let peer: SocketAddr = r["details"]["peer"].as_str().unwrap().parse().unwrap();
        assert_eq!(peer.ip(), loser_source, "{r}");
    }
    assert!(enrolled.len() <= 1 && refused.len() <= 1, "{records:?}");
    enrolled.len() == 1 && refused.len() == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_join_token_redeemed_on_two_replicas_at_once_enrols_exactly_one() {
    let Some(m) = ProcessCluster::start_processes(2, 0).await else {
        return;
    };
    m.wait_peers().await;
    let apis = [m.replicas[0].api(), m.replicas[1].api()];
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("race-{round:02}");
        // Tokens come from either replica: the store, not the creator, decides.
        let token = join_token(apis[round % 2], &id, 300).await;
        // Addresses of their own: each refusal is its source's first (audited in full, not
        // folded into a per-source summary), and no per-address enrolment limit is reached.
        let sources = [client_ip(2 * round), client_ip(2 * round + 1)];
        let attempts = race(apis, sources, &token, &id).await;
        let won: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.response.status == 200)
            .collect();
        let statuses: Vec<(u16, &str)> = attempts
            .iter()
            .map(|a| (a.response.status, a.response.body.as_str()))
            .collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one enrols: {statuses:?}"
        );
        let winner = won[0];
        let loser = &attempts[1 - winner.replica];
        assert_eq!(loser.response.status, 401, "round {round}: {statuses:?}");
        let refusal = loser.response.json();
        assert_eq!(refusal["error"]["code"], "unauthorized", "{refusal}");

        // The certificate is for the agent and for the winner's own key: it connects.
        let signed = winner.response.json();
        let identity = raw::issued(&signed, winner.key_pem.clone());
        let info = mesh_certs::inspect_pem(&identity.cert_pem).unwrap();
        assert_eq!(info.common_name.as_deref(), Some(id.as_str()));
        assert_eq!(info.pin, identity.pin);
        let hub = m.replicas[winner.replica].hub_addr();
        let (session, _) = raw::session(hub, m.pki.ca.cert_pem(), &identity, &id).await;
        drop(session);
        outcomes.push((id, winner.replica, identity.pin, loser.source));
    }
    let wins_r0 = outcomes.iter().filter(|o| o.1 == 0).count();
    eprintln!(
        "{ROUNDS} rounds: r0 won {wins_r0}, r1 won {}",
        ROUNDS - wins_r0
    );

    // Each outcome is in the chain of the replica where it happened, and either replica
    // lists it (the fleet's audit, mirrored through the shared store).
    for (id, winner, pin, loser_source) in &outcomes {
        for api in apis {
            eventually(
                "the round's outcome in the fleet audit",
                PATIENCE,
                || async {
                    let records = fleet_audit(api, &format!("agent={id}")).await;
                    audited(&records, *winner, pin, *loser_source)
                },
            )
            .await;
        }
    }
    for p in &m.replicas {
        audit_verify(&p.audit_path()).unwrap();
    }
}
