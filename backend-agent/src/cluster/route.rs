//! A command for an agent held by another replica: forwarded as a NATS request to the
//! holder's `agent.<X>.dispatch`, which authorises, records, audits and dispatches it as
//! if it had arrived there, and answers with the record (or the refusal).
//!
//! The same subject carries handovers ([`Handover`]): a command held on one replica for an
//! offline agent, passed to the replica the agent attached to, which dispatches it with the
//! same command id (compare-and-set `pending` → `dispatched` in the shared store), and
//! cancels `{"cancel": …}` of a command dispatched to the agent, authorised where the
//! operator asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentmesh_protocol::CommandFrame;
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

/// A command held for an offline agent, handed to the replica holding its session now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handover {
    /// The replica handing it over (for logs).
    pub from: String,
    /// Target agent.
    pub agent_id: String,
    /// The frame as the agent gets it (with the command's id; args not redacted).
    pub frame: CommandFrame,
    /// Unix ms of its `queue_ttl_ms` deadline: past it, it is not dispatched.
    pub deadline_ms: i64,
}

/// The wire form of a handover on `agent.<X>.dispatch` (a [`RoutedCall`] has no `handover`).
#[derive(Serialize, Deserialize)]
struct HandoverEnvelope {
    handover: Handover,
}

/// The wire form of a cancel on `agent.<X>.dispatch`: command `command_id`, dispatched to
/// X by some replica, is cancelled on the session held there.
#[derive(Serialize, Deserialize)]
struct CancelEnvelope {
    cancel: RoutedCancel,
}

#[derive(Clone, Serialize, Deserialize)]
struct RoutedCancel {
    agent_id: String,
    command_id: String,
}

/// The answer to a [`Handover`].
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandedOver {
    /// No longer the sender's to hold: dispatched there now, or no longer `pending` in the
    /// store (dispatched by an earlier try, cancelled or expired).
    Taken,
    /// The agent is not connected there (or nowhere: no responders).
    NotHere,
    /// Not dispatched now (store or NATS trouble, deadline passed there): keep holding it.
    Failed {
        /// A stable code (`store_unavailable`, `cluster_unavailable`, `queue_ttl_expired`, …).
        code: String,
        /// The message.
        message: String,
    },
}

impl HandedOver {
    /// A failure with `code`.
    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        HandedOver::Failed {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl Cluster {
    /// Whether this replica is shutting down (long-running cluster work stops).
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Hands `handover` to the replica holding its agent's session and waits (at most
    /// `request_timeout_ms`) for its answer. Never panics; every failure is [`HandedOver::Failed`].
    pub async fn hand_over(&self, handover: &Handover) -> HandedOver {
        if !self.connected() {
            return HandedOver::failed("cluster_unavailable", "NATS is down");
        }
        let envelope = HandoverEnvelope {
            handover: handover.clone(),
        };
        let payload = match serde_json::to_vec(&envelope) {
            Ok(p) => p,
            Err(e) => return HandedOver::failed("internal", e.to_string()),
        };
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        let subject = self.agent_subject(&handover.agent_id, "dispatch");
        let reply = match self.client.send_request(subject, request).await {
            Ok(m) => m,
            Err(e) if e.kind() == RequestErrorKind::NoResponders => return HandedOver::NotHere,
            Err(e) => return HandedOver::failed("cluster_unavailable", e.to_string()),
        };
        serde_json::from_slice::<HandedOver>(&reply.payload).unwrap_or_else(|e| {
            HandedOver::failed(
                "cluster_unavailable",
                format!("malformed handover answer: {e}"),
            )
        })
    }

    /// Asks the replica holding `agent_id` to cancel `command_id` on its session (the
    /// cancel was authorised and audited here). `false`: nobody holds the agent, or no
    /// answer within `request_timeout_ms`.
    pub async fn cancel_remote(&self, agent_id: &str, command_id: &str) -> bool {
        if !self.connected() {
            return false;
        }
        let envelope = CancelEnvelope {
            cancel: RoutedCancel {
                agent_id: agent_id.to_owned(),
                command_id: command_id.to_owned(),
            },
        };
        let Ok(payload) = serde_json::to_vec(&envelope) else {
            return false;
        };
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        let subject = self.agent_subject(agent_id, "dispatch");
        match self.client.send_request(subject, request).await {
            Ok(reply) => serde_json::from_slice::<bool>(&reply.payload).unwrap_or(false),
            Err(_) => false,
        }
    }

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
        if let Ok(envelope) = serde_json::from_slice::<CancelEnvelope>(&msg.payload) {
            let RoutedCancel {
                agent_id,
                command_id,
            } = envelope.cancel;
            let sent = match self.commands() {
                Some(commands) => commands.cancel_on_session(&agent_id, &command_id),
                None => false,
            };
            self.answer(reply, &sent).await;
            return;
        }
        if let Ok(envelope) = serde_json::from_slice::<HandoverEnvelope>(&msg.payload) {
            let answer = match self.commands() {
                Some(commands) => commands.serve_handover(&envelope.handover).await,
                None => HandedOver::NotHere,
            };
            self.answer(reply, &answer).await;
            return;
        }
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
        self.answer(reply, &answer).await;
    }

    async fn answer(&self, reply: async_nats::Subject, answer: &impl Serialize) {
        let Ok(payload) = serde_json::to_vec(answer) else {
            return;
        };
        if let Err(e) = self.client.publish(reply, payload.into()).await {
            debug!(error = %e, "routed command answer not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handover() -> Handover {
        Handover {
            from: "r0".into(),
            agent_id: "edge-01".into(),
            frame: CommandFrame {
                command_id: "c1".into(),
                verb: "echo".into(),
                args: Map::new(),
                timeout_ms: Some(5_000),
                requested_by: "ops".into(),
                issued_at: "2026-01-01T00:00:00Z".into(),
            },
            deadline_ms: 42,
        }
    }

    #[test]
    fn a_handover_is_never_read_as_a_routed_call_nor_the_other_way() {
        let envelope = HandoverEnvelope {
            handover: handover(),
        };
        let text = serde_json::to_vec(&envelope).unwrap_or_default();
        assert!(serde_json::from_slice::<RoutedCall>(&text).is_err());
        match serde_json::from_slice::<HandoverEnvelope>(&text) {
            Ok(e) => assert_eq!(e.handover.frame.command_id, "c1"),
            Err(e) => panic!("{e}"),
        }
        let call = RoutedCall::new(
            &Principal {
                name: "ops".into(),
                role: Role::Operator,
                verbs: Vec::new(),
                labels: BTreeMap::new(),
            },
            "ops",
            None,
            &SubmitRequest {
                agent_id: "edge-01".into(),
                verb: "echo".into(),
                args: Map::new(),
                timeout_ms: None,
                queue_ttl_ms: None,
            },
        );
        let text = serde_json::to_vec(&call).unwrap_or_default();
        assert!(serde_json::from_slice::<HandoverEnvelope>(&text).is_err());
        assert!(serde_json::from_slice::<CancelEnvelope>(&text).is_err());
        let cancel = CancelEnvelope {
            cancel: RoutedCancel {
                agent_id: "edge-01".into(),
                command_id: "c1".into(),
            },
        };
        let text = serde_json::to_vec(&cancel).unwrap_or_default();
        assert!(serde_json::from_slice::<HandoverEnvelope>(&text).is_err());
        assert!(serde_json::from_slice::<RoutedCall>(&text).is_err());
    }

    #[test]
    fn handover_answers_round_trip() {
        for answer in [
            HandedOver::Taken,
            HandedOver::NotHere,
            HandedOver::failed("store_unavailable", "down"),
        ] {
            let text = serde_json::to_vec(&answer).unwrap_or_default();
            assert_eq!(
                serde_json::from_slice::<HandedOver>(&text).ok(),
                Some(answer)
            );
        }
        // A refusal from a replica that does not know handovers reads as a failure.
        let old = Routed::Refused {
            code: "bad_request".into(),
            message: "malformed routed command".into(),
        };
        let text = serde_json::to_vec(&old).unwrap_or_default();
        assert!(serde_json::from_slice::<HandedOver>(&text).is_err());
    }
}
