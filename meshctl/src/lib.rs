//! `meshctl`: the agentmesh operator CLI. Everything it does goes through the public HTTP API
//! (README, "Operator API"), so whatever it shows, a script can do with `curl` too.
//!
//! # Layout
//! - [`cli`]: the command line (clap derive) and shell completions.
//! - [`profile`]: where the backend URL, token and CA come from (flags, environment, profile file).
//! - [`client`]: a small HTTP/1.1 client (hyper) over TCP or rustls, JSON in and out.
//! - [`sse`]: a Server-Sent Events parser for `GET /api/v1/events`.
//! - [`args`]: `param=value` arguments typed and checked by a verb's schema before sending.
//! - [`output`]: tables, JSON and YAML; TTY and colour decisions.
//! - [`yaml`]: a small YAML emitter for `serde_json::Value`.
//! - [`cmd`]: one module per group of subcommands.
//! - [`error`]: the error type and the documented exit codes (docs/meshctl.md).
#![forbid(unsafe_code)]

pub mod args;
pub mod cli;
pub mod client;
pub mod cmd;
pub mod error;
pub mod output;
pub mod profile;
pub mod sse;
pub mod yaml;

pub use error::{Error, ExitCode};

/// Runs one parsed command line; returns the process exit code.
pub async fn run(cli: cli::Cli) -> Result<u8, Error> {
    cmd::dispatch(cli).await
}
