//! Routes session events to the services that care: commands (results, held commands) and
//! enrolment (renewal, pin rotation).

use std::sync::Arc;

use agentmesh_protocol::{AgentFrame, ErrorBody, HelloFrame, HubFrame};
use tracing::warn;

use crate::commands::CommandService;
use crate::enrol::Enrolment;
use crate::hub::{EventFuture, SessionEvents};
use crate::registry::Registry;

/// The backend's session-event sink.
pub struct BackendEvents {
    /// Agents and sessions (to answer on the right session).
    pub registry: Arc<Registry>,
    /// Commands.
    pub commands: Arc<CommandService>,
    /// Enrolment and renewal.
    pub enrolment: Arc<Enrolment>,
}

impl SessionEvents for BackendEvents {
    fn connected(&self, hello: &HelloFrame, _session_id: &str, pin: &str) {
        self.commands.on_connected(&hello.agent_id);
        let enrolment = self.enrolment.clone();
        let (agent, pin) = (hello.agent_id.clone(), pin.to_owned());
        tokio::spawn(async move { enrolment.on_session(&agent, &pin).await });
    }

    fn frame<'a>(
        &'a self,
        agent_id: &'a str,
        spki: &'a [u8],
        frame: AgentFrame,
    ) -> EventFuture<'a> {
        match frame {
            AgentFrame::Result(result) => Box::pin(self.commands.on_result(agent_id, spki, result)),
            AgentFrame::Renew { csr } => Box::pin(self.renew(agent_id, csr)),
            AgentFrame::Error(e) => {
                warn!(agent.id = %agent_id, code = %e.code, message = %e.message, "agent reported an error");
                Box::pin(async {})
            }
            AgentFrame::Output(_) | AgentFrame::Hello(_) => Box::pin(async {}),
        }
    }
}

impl BackendEvents {
    async fn renew(&self, agent_id: &str, csr: String) {
        let Some(session) = self.registry.session(agent_id) else {
            return;
        };
        let Some(current_pin) = self.registry.get(agent_id).and_then(|v| v.pin) else {
            return;
        };
        let reply = match self.enrolment.renew(agent_id, &current_pin, &csr).await {
            Ok(signed) => HubFrame::Renewed {
                certificate: signed.certificate,
                ca: signed.ca,
                pin: signed.pin,
            },
            Err(e) => {
                warn!(agent.id = %agent_id, error = %e, "renewal refused");
                HubFrame::Error(ErrorBody::new("renew_failed", e.to_string()))
            }
        };
        if session.tx.send(reply).await.is_err() {
            warn!(agent.id = %agent_id, "session ended before the renewal answer could be sent");
        }
    }
}
