//! Certificate renewal against the minimal in-test hub: the agent asks for a certificate when
//! its own is about to expire, installs a good answer and reconnects at once, and keeps its
//! session and its old identity when the hub refuses or answers with something unusable.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use agentmesh_protocol::{AgentFrame, CommandFrame, CommandStatus, ErrorBody, HubFrame};
use gateway_agent::{run_with_state, AgentState};
use mesh_certs::Validity;
use support::{kinds, welcome, Conn, Event, Pki, TestHub};
use time::OffsetDateTime;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

/// An agent whose certificate has one day left of eleven: due for renewal at once.
fn expiring() -> Pki {
    let now = OffsetDateTime::now_utc();
    Pki::with_validity(
        "edge-01",
        Validity {
            not_before: now - time::Duration::days(10),
            not_after: now + time::Duration::days(1),
        },
    )
}

struct Running {
    hub: TestHub,
    state: std::sync::Arc<AgentState>,
    stop: oneshot::Sender<()>,
    agent: tokio::task::JoinHandle<Result<(), gateway_agent::RunError>>,
}

async fn start(pki: &Pki) -> Running {
    let hub = TestHub::start(&pki.server).await;
    let config = pki.config(hub.addr.port(), &[&pki.server.pin], "");
    let state = AgentState::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(run_with_state(config, state.clone(), async move {
        let _ = stopped.await;
    }));
    Running {
        hub,
        state,
        stop,
        agent,
    }
}

impl Running {
    /// Accepts the next connection and welcomes it.
    async fn session(&mut self, id: &str) -> Conn {
        let mut conn = tokio::time::timeout(WAIT, self.hub.conns.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(conn.next_frame().await, AgentFrame::Hello(_)));
        conn.send(&welcome(id)).await;
        conn
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(WAIT, self.agent)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn renew_request(conn: &mut Conn) -> String {
    match conn.next_frame().await {
        AgentFrame::Renew { csr } => csr,
        other => panic!("expected renew, got {other:?}"),
    }
}

/// The session is alive: a `ping` is answered.
async fn still_serves(conn: &mut Conn, id: &str) {
    conn.send(&HubFrame::Command(CommandFrame {
        command_id: id.into(),
        verb: "ping".into(),
        args: Default::default(),
        timeout_ms: None,
        requested_by: "ops".into(),
        issued_at: String::new(),
    }))
    .await;
    match conn.next_frame().await {
        AgentFrame::Result(r) => {
            assert_eq!((r.command_id.as_str(), r.status), (id, CommandStatus::Ok))
        }
        other => panic!("expected a result, got {other:?}"),
    }
}

#[tokio::test]
async fn an_expiring_certificate_is_renewed_installed_and_used_at_once() {
    let pki = expiring();
    let old_cert = pki.agent_cert();
    let mut agent = start(&pki).await;
    let mut conn = agent.session("s-1").await;
    let csr = renew_request(&mut conn).await;
    let issued = pki
        .ca
        .sign_agent_csr(&csr, "edge-01", Validity::days(90))
        .unwrap();
    conn.send(&HubFrame::Renewed {
        certificate: issued.cert_pem.clone(),
        ca: pki.ca.cert_pem().to_owned(),
        pin: issued.pin.clone(),
    })
    .await;
    // Closed normally, and back at once with the new certificate on disk.
    assert!(matches!(conn.next().await, Event::Close(Some(1000))));
    let mut conn = agent.session("s-2").await;
    assert_eq!(pki.agent_cert(), issued.cert_pem);
    let key = std::fs::read_to_string(pki.agent_dir.join("key.pem")).unwrap();
    assert!(gateway_agent::signing::key_matches_cert(
        &key,
        &issued.cert_pem
    ));
    let s = tokio::time::timeout(
        WAIT,
        agent.state.wait_for(|s| s.connected && s.connects == 2),
    )
    .await
    .unwrap();
    assert_eq!(s.renewals, 1, "{s:?}");
    // A 90-day certificate is not due: no second request, the session just serves.
    still_serves(&mut conn, "c-1").await;
    agent.stop().await;

    let records = pki.audit_records();
    let enrolled = records.iter().find(|r| r["kind"] == "enrolled").unwrap();
    assert_eq!(enrolled["details"]["source"], "renewal");
    assert_eq!(enrolled["details"]["pin"], issued.pin.as_str());
    assert_eq!(
        enrolled["details"]["previous_pin"],
        mesh_certs::pin_from_pem(&old_cert).unwrap().as_str()
    );
    let result = records
        .iter()
        .find(|r| r["kind"] == "command_result")
        .unwrap();
    assert_eq!(result["details"]["agent_pin"], issued.pin.as_str());
    assert!(kinds(&records).contains(&"agent_disconnected".to_owned()));
}

#[tokio::test]
async fn a_refused_renewal_keeps_the_session_and_the_certificate() {
    let pki = expiring();
    let old_cert = pki.agent_cert();
    let mut agent = start(&pki).await;
    let mut conn = agent.session("s-1").await;
    let _csr = renew_request(&mut conn).await;
    conn.send(&HubFrame::Error(ErrorBody::new(
        "renew_failed",
        "no CA configured",
    )))
    .await;
    still_serves(&mut conn, "c-1").await;
    // A certificate nobody asked for any more is ignored.
    let unasked = pki.ca.issue_agent("edge-01", Validity::days(90)).unwrap();
    conn.send(&HubFrame::Renewed {
        certificate: unasked.cert_pem,
        ca: pki.ca.cert_pem().to_owned(),
        pin: unasked.pin,
    })
    .await;
    still_serves(&mut conn, "c-2").await;
    assert_eq!(pki.agent_cert(), old_cert);
    assert_eq!(agent.state.snapshot().renewals, 0);
    agent.stop().await;
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_not_installed() {
    let pki = expiring();
    let old_cert = pki.agent_cert();
    let mut agent = start(&pki).await;
    let mut conn = agent.session("s-1").await;
    let csr = renew_request(&mut conn).await;
    let wrong = pki
        .ca
        .sign_agent_csr(&csr, "edge-02", Validity::days(90))
        .unwrap();
    conn.send(&HubFrame::Renewed {
        certificate: wrong.cert_pem,
        ca: pki.ca.cert_pem().to_owned(),
        pin: wrong.pin,
    })
    .await;
    still_serves(&mut conn, "c-1").await;
    assert_eq!(pki.agent_cert(), old_cert);
    assert!(!pki.agent_dir.join("key.pem.new").exists());
    agent.stop().await;
    assert!(!kinds(&pki.audit_records()).contains(&"enrolled".to_owned()));
}
