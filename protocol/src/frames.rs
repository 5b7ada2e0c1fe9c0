//! The v1 frames, one JSON object per WebSocket text message, tagged by `"type"`.
//!
//! Unknown fields are ignored (so a newer peer can add fields); an unknown `type` is a decode
//! error the receiver answers with an `error` frame.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::verbs::{ArgError, VerbSpec};

/// Frames an agent sends to the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentFrame {
    /// First frame of every session.
    Hello(HelloFrame),
    /// The final outcome of a command.
    Result(ResultFrame),
    /// An optional streaming chunk of a running command's output.
    Output(OutputFrame),
    /// Something the agent could not process.
    Error(ErrorBody),
    /// Asks the hub to sign a new certificate for this agent (renewal).
    Renew {
        /// PEM certificate signing request for a freshly generated key.
        csr: String,
    },
    /// Answer to `challenge`: proof that the agent holds its certificate's key.
    ChallengeResponse(ChallengeResponseFrame),
}

/// Frames the hub sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubFrame {
    /// Answer to a valid `hello`.
    Welcome(WelcomeFrame),
    /// Run a verb.
    Command(CommandFrame),
    /// Cancel a running command.
    Cancel {
        /// The command to cancel.
        command_id: String,
    },
    /// The hub is shutting down; reconnect after the given delay.
    Drain {
        /// How long the agent should wait before reconnecting.
        reconnect_after_ms: u64,
    },
    /// Something the hub could not process.
    Error(ErrorBody),
    /// Answer to `renew`: the new certificate, signed by the mesh CA.
    Renewed {
        /// PEM certificate for the key of the `renew` CSR.
        certificate: String,
        /// PEM of the mesh CA.
        ca: String,
        /// The new certificate's pin (now enrolled beside the old one).
        pin: String,
    },
    /// Sent right after `welcome` on a session whose certificate a proxy forwarded: the agent
    /// must sign it (see [`crate::proof`]) before any command is dispatched.
    Challenge(ChallengeFrame),
}

/// `hello`: the agent's identity and capabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloFrame {
    /// Protocol version the agent speaks.
    pub protocol: u32,
    /// Must equal the client certificate's subject CN.
    pub agent_id: String,
    /// Agent software version.
    #[serde(default)]
    pub version: String,
    /// Site name from the agent's config.
    #[serde(default)]
    pub site: String,
    /// The host's name.
    #[serde(default)]
    pub hostname: String,
    /// Free-form labels used by selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The verbs this agent offers (built-ins included).
    #[serde(default)]
    pub verbs: Vec<VerbSpec>,
    /// How many commands the agent runs at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Ids of finished commands whose results the agent still holds for delivery.
    #[serde(default)]
    pub pending_results: Vec<String>,
    /// Fresh random nonce (standard base64 of [`crate::proof::NONCE_BYTES`] bytes) the hub signs
    /// in `welcome`; absent from agents that do not check the hub's signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

fn default_max_concurrency() -> u32 {
    1
}

impl HelloFrame {
    /// The verbs whose schema is unusable (a pattern over the size limits or that does not
    /// compile), each with the reason, for the hub to log once per `hello`. Commands for them
    /// are refused (422) by [`VerbSpec::validate_args`] whether or not anyone looks here.
    pub fn unusable_verbs(&self) -> impl Iterator<Item = (&str, ArgError)> + '_ {
        self.verbs
            .iter()
            .filter_map(|v| v.check_patterns().err().map(|e| (v.name.as_str(), e)))
    }
}

/// `welcome`: the hub accepted the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WelcomeFrame {
    /// Protocol version the hub speaks.
    pub protocol: u32,
    /// Unique id of this session (for logs and audit).
    pub session_id: String,
    /// Hub clock, RFC 3339.
    pub server_time: String,
    /// WebSocket ping interval; a peer silent for 3 intervals is dropped.
    pub heartbeat_secs: u64,
    /// Largest message either side may send.
    pub max_message_bytes: u64,
    /// Base64 ECDSA P-256 signature by the hub's TLS key over
    /// [`crate::proof::welcome_message`]; present when `hello` carried a nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Base64 DER SubjectPublicKeyInfo of the key that made `signature` (its pin must be one of
    /// the agent's `server_pins`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_key: Option<String>,
    /// True when a `challenge` frame follows: the agent must answer it before anything else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub challenge_follows: bool,
}

/// `challenge`: a nonce the agent signs with its certificate key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeFrame {
    /// Fresh random nonce, standard base64 of [`crate::proof::NONCE_BYTES`] bytes.
    pub nonce: String,
}

/// `challenge_response`: the agent's signature over [`crate::proof::challenge_message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponseFrame {
    /// Base64 ECDSA P-256 (SHA-256, ASN.1 DER) signature by the agent's certificate key.
    pub signature: String,
}

/// `command`: run one verb.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandFrame {
    /// Unique id (UUIDv7); a repeated id is answered from the agent's result store.
    pub command_id: String,
    /// Verb name as advertised in `hello`.
    pub verb: String,
    /// Arguments, validated against the verb's params.
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
    /// Requested timeout; the smaller of this and the verb's own wins.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The operator token name that asked for it.
    #[serde(default)]
    pub requested_by: String,
    /// When the backend accepted the request, RFC 3339.
    #[serde(default)]
    pub issued_at: String,
}

/// Final status of a command as reported by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Ran and exited 0.
    Ok,
    /// Ran and failed (non-zero exit, spawn failure).
    Failed,
    /// Refused before running (unknown verb, bad args, rate limited).
    Rejected,
    /// Killed at its timeout.
    Timeout,
    /// Killed by a `cancel`.
    Cancelled,
}

impl CommandStatus {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Ok => "ok",
            CommandStatus::Failed => "failed",
            CommandStatus::Rejected => "rejected",
            CommandStatus::Timeout => "timeout",
            CommandStatus::Cancelled => "cancelled",
        }
    }
}

/// `result`: the outcome of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultFrame {
    /// The command this answers.
    pub command_id: String,
    /// Final status.
    pub status: CommandStatus,
    /// Process exit code, when a process ran and exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Captured stdout (capped).
    #[serde(default)]
    pub stdout: String,
    /// Captured stderr (capped).
    #[serde(default)]
    pub stderr: String,
    /// True when stdout or stderr hit the cap.
    #[serde(default)]
    pub truncated: bool,
    /// When execution started, RFC 3339.
    #[serde(default)]
    pub started_at: Option<String>,
    /// Wall time of the execution.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Machine-readable reason for `failed`/`rejected`/`timeout`/`cancelled`.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// Base64 ECDSA P-256 signature by the agent's certificate key over the result's digest
    /// (see `docs/audit.md`); absent from agents that do not sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `output`: a streaming chunk of a running command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFrame {
    /// The running command.
    pub command_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The chunk (UTF-8, lossily converted).
    pub data: String,
}

/// `{code, message}`: the body of an `error` frame and of a result's `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `unknown_type`, `rate_limited`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl AgentFrame {
    /// The frame's `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentFrame::Hello(_) => "hello",
            AgentFrame::Result(_) => "result",
            AgentFrame::Output(_) => "output",
            AgentFrame::Error(_) => "error",
            AgentFrame::Renew { .. } => "renew",
            AgentFrame::ChallengeResponse(_) => "challenge_response",
        }
    }

    /// Serialises the frame to JSON text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

impl HubFrame {
    /// The frame's `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            HubFrame::Welcome(_) => "welcome",
            HubFrame::Command(_) => "command",
            HubFrame::Cancel { .. } => "cancel",
            HubFrame::Drain { .. } => "drain",
            HubFrame::Error(_) => "error",
            HubFrame::Renewed { .. } => "renewed",
            HubFrame::Challenge(_) => "challenge",
        }
    }

    /// Serialises the frame to JSON text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

fn to_json<T: Serialize>(frame: &T) -> String {
    // Frames hold only strings, numbers, maps and JSON values: serialisation cannot fail.
    serde_json::to_string(frame).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","code":"internal","message":"serialise: {e}"}}"#)
    })
}
