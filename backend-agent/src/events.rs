//! Routes session events to the services that care: commands (results, held commands) and
//! enrolment (renewal, pin rotation).
//!
//! Nothing here awaits the session's own outbound queue: the session task is the only
//! reader of that queue and it awaits these handlers, so a `send().await` on a full queue
//! would deadlock it. Answers go out with `try_send`; a full queue drops the answer (the
//! agent asks again after its own timeout). Results go to the command service's bounded
//! queue and renewals to tasks of their own, so the session loop never waits for SQLite or
//! the CA: it keeps reading, pinging and honouring close requests while a result is stored.
//!
//! The operator event stream (`GET /api/v1/events`) lives below: [`bus`] (fan-out, resume
//! ring, drop rule) and [`sse`] (the handler).

pub mod bus;
pub mod sse;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use agentmesh_protocol::{AgentFrame, ErrorBody, HelloFrame, HubFrame};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::audit_flood::FailureAudit;
use crate::commands::CommandService;
use crate::enrol::{EnrolError, Enrolment};
use crate::hub::{EventFuture, RefreshFuture, SessionEvents, TaskCounter};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Renewals being signed at once across the hub; more are refused with `renew_busy`.
pub const MAX_CONCURRENT_RENEWALS: usize = 8;

/// The backend's session-event sink.
pub struct BackendEvents {
    /// Agents and sessions (to answer on the right session).
    pub registry: Arc<Registry>,
    /// Commands.
    pub commands: Arc<CommandService>,
    /// Enrolment and renewal.
    pub enrolment: Arc<Enrolment>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Refusal records, aggregated per agent so a renew flood stays a few records.
    pub failures: Arc<FailureAudit>,
    /// Bounds renewals in flight (see [`MAX_CONCURRENT_RENEWALS`]).
    pub renewals: Arc<Semaphore>,
    /// Shutdown waits for queued results as it does for sessions.
    pub tasks: TaskCounter,
}

impl SessionEvents for BackendEvents {
    fn connected(&self, hello: &HelloFrame, session_id: &str, pin: &str) {
        self.commands.on_connected(&hello.agent_id);
        if let Some(cluster) = self.commands.cluster() {
            cluster.attached(hello, session_id);
        }
        let enrolment = self.enrolment.clone();
        let (agent, pin) = (hello.agent_id.clone(), pin.to_owned());
        tokio::spawn(async move { enrolment.on_session(&agent, &pin).await });
    }

    fn disconnected(&self, agent_id: &str, session_id: &str) {
        if let Some(cluster) = self.commands.cluster() {
            cluster.detached(agent_id, session_id);
        }
    }

    /// In a cluster: reload the agent from the shared store (bounded by
    /// [`crate::cluster::MAX_IDENTITY_REFRESHES`]); on a single node nothing can help.
    fn refresh_identity<'a>(&'a self, agent_id: &'a str) -> RefreshFuture<'a> {
        Box::pin(async move {
            match self.commands.cluster() {
                Some(cluster) => cluster.refresh_identity(agent_id).await,
                None => false,
            }
        })
    }

    fn frame<'a>(
        &'a self,
        agent_id: &'a str,
        spki: &'a [u8],
        frame: AgentFrame,
    ) -> EventFuture<'a> {
        match frame {
            // Queued for the command service's results worker; the session waits only
            // while that queue is full (backpressure, see `commands::results`).
            AgentFrame::Result(result) => Box::pin(async move {
                let task = Some(self.tasks.enter());
                self.commands
                    .queue_result(agent_id, spki, result, task)
                    .await;
            }),
            AgentFrame::Renew { csr } => {
                self.renew(agent_id, spki, csr);
                Box::pin(async {})
            }
            AgentFrame::Error(e) => {
                warn!(agent.id = %agent_id, code = %e.code, message = %e.message, "agent reported an error");
                Box::pin(async {})
            }
            // A challenge_response outside the handshake answers nothing: ignored.
            AgentFrame::Output(_) | AgentFrame::Hello(_) | AgentFrame::ChallengeResponse(_) => {
                Box::pin(async {})
            }
        }
    }
}

impl BackendEvents {
    /// Handles a `renew` off the session loop (signing and the store take time), bounded by
    /// [`MAX_CONCURRENT_RENEWALS`].
    fn renew(&self, agent_id: &str, spki: &[u8], csr: String) {
        let Some(session) = self.registry.session(agent_id) else {
            return;
        };
        // The pin of the very session that asked (the hub pinned the same SPKI bytes).
        let current_pin = mesh_certs::pin_from_spki_der(spki);
        let Ok(permit) = self.renewals.clone().try_acquire_owned() else {
            let e = EnrolError::RenewalRefused {
                code: "renew_busy",
                message: "too many renewals in progress; retry later".to_owned(),
            };
            return self.refused(agent_id, &session, &e);
        };
        let (enrolment, agent) = (self.enrolment.clone(), agent_id.to_owned());
        let (metrics, failures) = (self.metrics.clone(), self.failures.clone());
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let outcome = enrolment.renew(&agent, &current_pin, &csr).await;
            drop(permit);
            let this = Refuser {
                metrics: &metrics,
                failures: &failures,
            };
            // The session may have ended (or been replaced) while signing.
            let session = registry
                .session(&agent)
                .filter(|s| s.session_id == session.session_id);
            match (outcome, session) {
                (Ok(signed), Some(session)) => {
                    let reply = HubFrame::Renewed {
                        certificate: signed.certificate,
                        ca: signed.ca,
                        pin: signed.pin,
                    };
                    if session.tx.try_send(Box::new(reply)).is_err() {
                        warn!(agent.id = %agent, "session queue full or closed: renewal answer dropped");
                    }
                }
                (Ok(_), None) => {
                    warn!(agent.id = %agent, "session ended before the renewal answer could be sent")
                }
                (Err(e), session) => this.refuse(&agent, session.as_ref(), &e),
            }
        });
    }

    fn refused(&self, agent_id: &str, session: &crate::registry::LiveSession, e: &EnrolError) {
        Refuser {
            metrics: &self.metrics,
            failures: &self.failures,
        }
        .refuse(agent_id, Some(session), e)
    }
}

/// Answers and records a refused renewal.
struct Refuser<'a> {
    metrics: &'a Metrics,
    failures: &'a FailureAudit,
}

impl Refuser<'_> {
    fn refuse(
        &self,
        agent_id: &str,
        session: Option<&crate::registry::LiveSession>,
        e: &EnrolError,
    ) {
        let code = match e {
            EnrolError::RenewalRefused { code, .. } => *code,
            _ => "renew_failed",
        };
        let message = e.to_string();
        warn!(agent.id = %agent_id, code, error = %message, "renewal refused");
        self.metrics
            .renewals_refused
            .fetch_add(1, Ordering::Relaxed);
        // Keyed by agent, not address: the caller is authenticated.
        self.failures.failure(
            &format!("agent:{agent_id}"),
            &format!("renew: {code}"),
            || crate::audit::events::renewal_refused(agent_id, code, &message),
        );
        if let Some(session) = session {
            let frame = HubFrame::Error(ErrorBody::new(code, message));
            if session.tx.try_send(Box::new(frame)).is_err() {
                warn!(agent.id = %agent_id, "session queue full or closed: renewal refusal dropped");
            }
        }
    }
}
