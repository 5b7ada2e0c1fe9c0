//! A command for an agent held by another replica: forwarded as a NATS request to the
//! holder's `agent.<X>.dispatch`, which authorises, records, audits and dispatches it as
//! if it had arrived there, and answers with the record (or the refusal).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::RequestErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{debug, warn};

use super::Cluster;
use crate::auth::{Principal, Role};
use crate::commands::{SubmitError, SubmitRequest};
use crate::store::CommandRecord;

/// One command forwarded to the replica holding the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutedCall {
    /// The caller's token name (the holder authorises again).
    pub caller: String,
    /// Its role.
    pub role: Role,
    /// Its verb scope.
    pub verbs: Vec<String>,
    /// Its label scope.
    pub labels: BTreeMap<String, String>,
    /// Part of a fan-out job (checked as `fan_out`), with this job id.
    pub job_id: Option<String>,
    /// Who the record names as requester.
    pub requested_by: String,
    /// Target agent.
    pub agent_id: String,
    /// Verb.
    pub verb: String,
    /// Arguments.
    pub args: Map<String, Value>,
    /// Requested timeout.
    pub timeout_ms: Option<u64>,
}

impl RoutedCall {
    /// The call for `req` on behalf of `caller`.
    pub fn new(
        caller: &Principal,
        requested_by: &str,
        job_id: Option<&str>,
        req: &SubmitRequest,
    ) -> Self {
        RoutedCall {
            caller: caller.name.clone(),
            role: caller.role,
            verbs: caller.verbs.clone(),
            labels: caller.labels.clone(),
            job_id: job_id.map(str::to_owned),
            requested_by: requested_by.to_owned(),
            agent_id: req.agent_id.clone(),
            verb: req.verb.clone(),
            args: req.args.clone(),
            timeout_ms: req.timeout_ms,
        }
    }

    /// The caller as the holder sees it.
    pub fn principal(&self) -> Principal {
        Principal {
            name: self.caller.clone(),
            role: self.role,
            verbs: self.verbs.clone(),
            labels: self.labels.clone(),
        }
    }

    /// The request as the holder submits it (never held: the holder has the session).
    pub fn request(&self) -> SubmitRequest {
        SubmitRequest {
            agent_id: self.agent_id.clone(),
            verb: self.verb.clone(),
            args: self.args.clone(),
            timeout_ms: self.timeout_ms,
            queue_ttl_ms: None,
        }
    }
}

/// The holder's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routed {
    /// Recorded and dispatched there.
    Record(Box<CommandRecord>),
    /// Refused there, with the stable code and message of its [`SubmitError`].
    Refused {
        /// [`SubmitError::code`].
        code: String,
        /// The message.
        message: String,
    },
    /// The session ended there in the meantime.
    NotHere,
}

impl Cluster {
    /// Forwards `call` to the holder of its agent. `None`: nobody holds it (not connected
    /// anywhere), so the caller goes on as for an offline agent.
    pub async fn route(&self, call: &RoutedCall) -> Option<Result<CommandRecord, SubmitError>> {
        if !self.connected() {
            return Some(Err(SubmitError::ClusterUnavailable(
                "this replica cannot reach the others (NATS is down); retry".into(),
            )));
        }
        let payload = match serde_json::to_vec(call) {
            Ok(p) => p,
            Err(e) => return Some(Err(SubmitError::ClusterUnavailable(e.to_string()))),
        };
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        let subject = self.agent_subject(&call.agent_id, "dispatch");
        let reply = match self.client.send_request(subject, request).await {
            Ok(m) => m,
            Err(e) if e.kind() == RequestErrorKind::NoResponders => return None,
            Err(e) => {
                warn!(agent.id = %call.agent_id, error = %e, "routed command got no answer");
                return Some(Err(SubmitError::ClusterUnavailable(format!(
                    "the replica holding agent {:?} did not answer: {e}",
                    call.agent_id
                ))));
            }
        };
        match serde_json::from_slice::<Routed>(&reply.payload) {
            Ok(Routed::Record(rec)) => Some(Ok(*rec)),
            Ok(Routed::Refused { code, message }) => {
                Some(Err(SubmitError::remote(&code, message, &call.agent_id)))
            }
            Ok(Routed::NotHere) => None,
            Err(e) => Some(Err(SubmitError::ClusterUnavailable(format!(
                "malformed answer from another replica: {e}"
            )))),
        }
    }

    /// Serves one forwarded command on the holder and answers it.
    pub(super) async fn serve_routed(self: &Arc<Self>, msg: async_nats::Message) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let answer = match (
            serde_json::from_slice::<RoutedCall>(&msg.payload),
            self.commands(),
        ) {
            (Err(e), _) => Routed::Refused {
                code: "bad_request".into(),
                message: format!("malformed routed command: {e}"),
            },
            (Ok(_), None) => Routed::NotHere,
            (Ok(call), Some(commands)) => match commands.serve_routed(&call).await {
                Ok(Some(rec)) => Routed::Record(Box::new(rec)),
                Ok(None) => Routed::NotHere,
                Err(e) => Routed::Refused {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                },
            },
        };
        let Ok(payload) = serde_json::to_vec(&answer) else {
            return;
        };
        if let Err(e) = self.client.publish(reply, payload.into()).await {
            debug!(error = %e, "routed command answer not sent");
        }
    }
}
