//! What `gateway-agent enroll` does around [`crate::enroll::enroll`]: the `enrolled` audit
//! record, the hub URL for the printed config snippet, and the text printed on success.
//!
//! Enrolment usually runs before the agent has a config, so it is audited only when an audit
//! log is known (`--audit FILE`, or the `[audit] path` of an existing config) **and already
//! exists**: `enroll` typically runs as root, and a log it created would belong to root and
//! lock the agent's service user out of its own audit log.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::audit::AgentAudit;
use crate::enroll::{config_snippet, enroll, EnrollError, EnrollOptions, Enrolled};

/// `gateway-agent enroll` as parsed.
#[derive(Debug, Clone)]
pub struct EnrollCommand {
    /// What to enrol with.
    pub options: EnrollOptions,
    /// `--hub-url`, for the snippet (derived from `--api` when absent).
    pub hub_url: Option<String>,
    /// The audit log to record the enrolment in, if one is known.
    pub audit: Option<PathBuf>,
}

/// The outcome of a successful enrolment.
#[derive(Debug, Clone)]
pub struct EnrollReport {
    /// What the backend answered.
    pub enrolled: Enrolled,
    /// The `[agent]`/`[outbound]` lines to put in `gateway.toml`.
    pub snippet: String,
    /// Where the enrolment was audited, or why it was not.
    pub audit: Result<PathBuf, String>,
}

/// Enrols, audits, and prepares what to print.
pub async fn run(command: &EnrollCommand) -> Result<EnrollReport, EnrollError> {
    let enrolled = enroll(&command.options).await?;
    let hub_url = command
        .hub_url
        .clone()
        .unwrap_or_else(|| default_hub_url(&command.options.api));
    let snippet = config_snippet(&enrolled, &command.options.out, &hub_url);
    let audit = match &command.audit {
        None => Err("no audit log is configured".to_owned()),
        Some(path) => record(path, &enrolled, &command.options.api).await,
    };
    Ok(EnrollReport {
        enrolled,
        snippet,
        audit,
    })
}

async fn record(path: &Path, enrolled: &Enrolled, api: &str) -> Result<PathBuf, String> {
    if !path.is_file() {
        return Err(format!("{} does not exist yet", path.display()));
    }
    let log = AgentAudit::open(path, &enrolled.agent_id).map_err(|e| e.to_string())?;
    let extra = json!({"api": api, "hub_pins": enrolled.hub_pins});
    log.enrolled("join_token", &enrolled.pin, extra).await;
    log.flush().await;
    Ok(path.to_owned())
}

/// The hub URL that usually goes with `api`: behind the https front door the hub is at
/// `/ws/agent` on the same host and port; a loopback http API (a dev setup) has the hub on
/// port 8081.
pub fn default_hub_url(api: &str) -> String {
    // `enroll` already refused an `--api` that does not parse; the fallback only keeps this total.
    let Ok(uri) = api.parse::<http::Uri>() else {
        return format!("wss://{api}/ws/agent");
    };
    let host = uri.host().unwrap_or_default();
    match (uri.scheme_str(), uri.port_u16()) {
        (Some("https"), Some(port)) => format!("wss://{host}:{port}/ws/agent"),
        (Some("https"), None) => format!("wss://{host}/ws/agent"),
        _ => format!("wss://{host}:8081/ws/agent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_url_follows_the_api() {
        assert_eq!(
            default_hub_url("https://mesh.example.com/"),
            "wss://mesh.example.com/ws/agent"
        );
        assert_eq!(
            default_hub_url("https://mesh.example.com:8443/api"),
            "wss://mesh.example.com:8443/ws/agent"
        );
        assert_eq!(
            default_hub_url("http://127.0.0.1:8080"),
            "wss://127.0.0.1:8081/ws/agent"
        );
        assert_eq!(
            default_hub_url("http://[::1]:8080"),
            "wss://[::1]:8081/ws/agent"
        );
        assert_eq!(
            default_hub_url("http://localhost"),
            "wss://localhost:8081/ws/agent"
        );
    }
}
