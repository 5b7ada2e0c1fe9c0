//! agentmesh wire protocol, version 1.
//!
//! Every frame that crosses the hub's WebSocket is a JSON object internally tagged by `"type"`.
//! This crate knows frames and nothing about sockets: it turns bytes into typed frames (or a
//! typed [`DecodeError`], never a panic) and frames back into JSON text.
//!
//! # Layout
//! - [`frames`]: the v1 frames in both directions ([`AgentFrame`], [`HubFrame`]).
//! - [`verbs`]: verb and parameter schemas advertised in `hello`, and argument validation.
//! - [`pattern`]: parameter patterns, compiled once within size limits.
//! - [`decode`]: the size-limited, panic-free decoder.
//! - [`close`]: WebSocket close codes used by the hub.
//! - [`proof`]: the byte strings the hub signs in `welcome` and the agent signs for `challenge`.
#![forbid(unsafe_code)]

pub mod close;
pub mod decode;
pub mod frames;
pub mod pattern;
pub mod proof;
pub mod verbs;

pub use decode::{decode_agent_frame, decode_hub_frame, DecodeError, DEFAULT_MAX_MESSAGE_BYTES};
pub use frames::{
    AgentFrame, ChallengeFrame, ChallengeResponseFrame, CommandFrame, CommandStatus, ErrorBody,
    HelloFrame, HubFrame, OutputFrame, ResultFrame, WelcomeFrame,
};
pub use verbs::{ArgError, ParamKind, ParamSpec, Pattern, VerbSpec};

/// The protocol version this build speaks; `hello.protocol` must equal it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The hub's WebSocket path.
pub const HUB_PATH: &str = "/ws/agent";
