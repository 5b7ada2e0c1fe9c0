//! The panic-free decoder: any input becomes a typed frame or a typed [`DecodeError`].

use serde::de::DeserializeOwned;

use crate::frames::{AgentFrame, HubFrame};

/// The default largest message either side accepts (1 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why bytes could not be turned into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Not valid UTF-8.
    #[error("message is not valid UTF-8")]
    NotUtf8,
    /// Not JSON, or not a JSON object.
    #[error("message is not a JSON object: {0}")]
    NotJson(String),
    /// A JSON object without a string `type`.
    #[error("message has no \"type\" field")]
    MissingType,
    /// A `type` this side does not know.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A known `type` whose fields are missing or of the wrong type.
    #[error("invalid {kind} frame: {detail}")]
    InvalidFrame {
        /// The frame's `type`.
        kind: String,
        /// What serde said.
        detail: String,
    },
}

impl DecodeError {
    /// Stable code for an `error` frame answering this.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotUtf8 => "not_utf8",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::MissingType => "missing_type",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::InvalidFrame { .. } => "invalid_frame",
        }
    }
}

const AGENT_TYPES: &[&str] = &[
    "hello",
    "result",
    "output",
    "error",
    "renew",
    "challenge_response",
];
const HUB_TYPES: &[&str] = &[
    "welcome",
    "command",
    "cancel",
    "drain",
    "error",
    "renewed",
    "challenge",
];

/// Decodes a frame sent by an agent.
///
/// A `hello`'s parameter patterns are compiled here, once and within
/// [`crate::pattern::MAX_PATTERNS_PER_HELLO`], so validating commands later never compiles.
pub fn decode_agent_frame(bytes: &[u8], limit: usize) -> Result<AgentFrame, DecodeError> {
    let frame = decode(bytes, limit, AGENT_TYPES)?;
    if let AgentFrame::Hello(hello) = &frame {
        crate::pattern::compile_hello_patterns(&hello.verbs);
    }
    Ok(frame)
}

/// Decodes a frame sent by the hub.
pub fn decode_hub_frame(bytes: &[u8], limit: usize) -> Result<HubFrame, DecodeError> {
    decode(bytes, limit, HUB_TYPES)
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
    known: &[&str],
) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
    // Parse once into a Value to tell "unknown type" from "bad fields" precisely.
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| DecodeError::NotJson("top level is not an object".to_owned()))?;
    let kind = object
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(DecodeError::MissingType)?
        .to_owned();
    if !known.contains(&kind.as_str()) {
        return Err(DecodeError::UnknownType(truncate(&kind, 64)));
    }
    serde_json::from_value(value).map_err(|e| DecodeError::InvalidFrame {
        kind,
        detail: e.to_string(),
    })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
