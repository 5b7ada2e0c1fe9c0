//! agentmesh gateway agent: runs on each remote host, dials out to the hub over mutually
//! authenticated, pinned TLS, advertises its verbs in `hello`, and answers the hub's frames.
//!
//! The agent never listens for the hub; it connects out (through NAT and firewalls) and keeps
//! reconnecting with jittered exponential backoff. The hub is trusted only if its chain verifies
//! to the mesh CA **and** its SPKI pin is in `outbound.server_pins` (README, "Identity and pins"),
//! or — through a TLS-terminating front door checked against `outbound.front_door_pins` or the
//! CA — if it signs `welcome` over the agent's fresh nonce with a key in `server_pins`
//! (`docs/protocol.md`, "Proof of possession").
//!
//! Entry points: [`GatewayConfig::load`] then [`run`] (or [`run_with_state`] to observe the
//! connection through [`AgentState`], or [`run_reloadable`] to apply config reloads).
//! `main.rs` only parses arguments and wires signals (SIGHUP loads and checks the file).
//!
//! # Layout
//! - [`config`]: `gateway.toml` ([`GatewayConfig`]), environment overrides, validation,
//!   `check-config`.
//! - [`tls`]: the rustls client config and the pinning server-certificate verifier.
//! - [`connect`]: TCP → TLS → WebSocket upgrade, each stage with its own timeout and error.
//! - [`session`]: `hello`/`welcome`, then the frame loop with the heartbeat silence limit.
//! - [`dialer`]: the reconnect loop, [`run`] and [`run_with_state`].
//! - [`renew`]: certificate renewal over the session, and its crash-safe installation.
//! - [`signing`]: the [`Signer`](signing::Signer) of `result` frames.
//! - [`audit`]: the agent's own audit log ([`AgentAudit`](audit::AgentAudit)).
//! - [`enroll`]: `gateway-agent enroll`, joining the mesh with a one-time token;
//!   [`enroll_cli`]: what the subcommand does around it.
//! - [`backoff`]: reconnect delays (exponential, jittered, reset after a healthy session).
//! - [`exec`]: the [`Executor`](exec::Executor): verbs, process groups, limits and the durable
//!   at-most-once command journal in `state_dir/results/journal`.
//! - [`commands`]: what a session does with `command`/`cancel` frames and how results are
//!   delivered (pending results after `welcome`, resend window).
//! - [`state`]: [`AgentState`], the observable connection state.
//! - [`health`]: the optional local `/health`, `/ready` and `/metrics` endpoint; `STATUS=`.
//! - [`metrics`]: the agent's Prometheus metrics.
//! - [`reload`]: SIGHUP: verbs, limits, labels and certificates without a restart.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backoff;
pub mod commands;
pub mod config;
pub mod connect;
pub mod dialer;
pub mod enroll;
pub mod enroll_cli;
pub mod exec;
pub mod health;
pub mod metrics;
pub mod reload;
pub mod renew;
pub mod session;
pub mod signing;
pub mod state;
pub mod tls;

pub use config::{
    check_config, config_warnings, ConfigError, GatewayConfig, ParamConfig, VerbConfig,
};
pub use dialer::{run, run_reloadable, run_with_state, RunError};
pub use exec::{Executor, Outgoing, Results, Submitted};
pub use state::{AgentState, StateSnapshot};
