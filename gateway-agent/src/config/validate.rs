//! The validation pass run after deserialising: everything serde cannot express.
//!
//! Each failure is `(dotted key, message)`; the caller adds the file name.

use std::collections::BTreeSet;

use tokio_tungstenite::tungstenite::http::Uri;

use super::params::{validate_param, validate_pattern_count};
use super::verbs::{is_param_name, parse_template, Segment, BUILTIN_VERB_NAMES};
use super::{GatewayConfig, VerbConfig};

pub(super) type Problem = (String, String);

pub(super) fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    (key.into(), message.into())
}

/// Checks the whole config; the first problem wins.
pub(super) fn validate(config: &GatewayConfig) -> Result<(), Problem> {
    validate_agent(config)?;
    validate_outbound(config)?;
    validate_limits(config)?;
    let mut names = BTreeSet::new();
    for (i, verb) in config.verbs.iter().enumerate() {
        let key = format!("verbs[{i}]");
        if !names.insert(verb.name.as_str()) {
            return Err(problem(
                format!("{key}.name"),
                format!("verb {:?} is defined twice", verb.name),
            ));
        }
        validate_verb(&key, verb, config.outbound.max_message_bytes)?;
    }
    validate_pattern_count(config)
}

fn validate_agent(config: &GatewayConfig) -> Result<(), Problem> {
    let agent = &config.agent;
    mesh_certs::validate_agent_id(&agent.id).map_err(|e| problem("agent.id", e.to_string()))?;
    if agent.site.trim().is_empty() || agent.site.len() > 128 || has_control(&agent.site) {
        return Err(problem(
            "agent.site",
            "must be 1 to 128 printable characters",
        ));
    }
    for (k, v) in &agent.labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok {
            return Err(problem(
                format!("agent.labels.{k}"),
                "label names are 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', '-', '/'",
            ));
        }
        if v.len() > 256 || has_control(v) || v.contains(',') {
            return Err(problem(
                format!("agent.labels.{k}"),
                "label values are at most 256 printable characters without ','",
            ));
        }
    }
    if agent.state_dir.as_os_str().is_empty() {
        return Err(problem("agent.state_dir", "must not be empty"));
    }
    if !(60..=2_592_000).contains(&agent.result_retention_secs) {
        return Err(problem(
            "agent.result_retention_secs",
            "must be between 60 and 2592000 (30 days)",
        ));
    }
    if !(1..=365).contains(&agent.renew_before_days) {
        return Err(problem(
            "agent.renew_before_days",
            "must be between 1 and 365",
        ));
    }
    Ok(())
}

fn validate_outbound(config: &GatewayConfig) -> Result<(), Problem> {
    let out = &config.outbound;
    super::parse_backend_urls(&out.backend_url).map_err(|m| problem("outbound.backend_url", m))?;
    for (key, path) in [
        ("outbound.ca", &out.ca),
        ("outbound.cert", &out.cert),
        ("outbound.key", &out.key),
    ] {
        if path.as_os_str().is_empty() {
            return Err(problem(key, "must not be empty"));
        }
    }
    if out.server_pins.is_empty() {
        return Err(problem(
            "outbound.server_pins",
            "at least one hub pin is required (print it with `mesh-certs pin server-cert.pem`); \
             the hub is never trusted on its chain alone",
        ));
    }
    for (i, pin) in out.server_pins.iter().enumerate() {
        if !mesh_certs::is_valid_pin(pin) {
            return Err(problem(
                format!("outbound.server_pins[{i}]"),
                format!(
                    "{pin:?} is not a pin; expected \"sha256//\" followed by 44 base64 characters"
                ),
            ));
        }
    }
    for (i, pin) in out.front_door_pins.iter().enumerate() {
        if !mesh_certs::is_valid_pin(pin) {
            return Err(problem(
                format!("outbound.front_door_pins[{i}]"),
                format!(
                    "{pin:?} is not a pin; expected \"sha256//\" followed by 44 base64 characters"
                ),
            ));
        }
    }
    if out.reconnect_min_ms == 0 {
        return Err(problem("outbound.reconnect_min_ms", "must be at least 1"));
    }
    if out.reconnect_min_ms > out.reconnect_max_ms {
        return Err(problem(
            "outbound.reconnect_min_ms",
            format!(
                "{} is larger than outbound.reconnect_max_ms ({})",
                out.reconnect_min_ms, out.reconnect_max_ms
            ),
        ));
    }
    if out.reconnect_max_ms > 3_600_000 {
        return Err(problem(
            "outbound.reconnect_max_ms",
            "must be at most 3600000 (one hour)",
        ));
    }
    if out.healthy_after_secs == 0 {
        return Err(problem("outbound.healthy_after_secs", "must be at least 1"));
    }
    if !(4096..=64 * 1024 * 1024).contains(&out.max_message_bytes) {
        return Err(problem(
            "outbound.max_message_bytes",
            "must be between 4096 and 67108864",
        ));
    }
    Ok(())
}

/// The parts of a hub URL the dialer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (443 when the URL has none).
    pub port: u16,
    /// Path and query of the WebSocket upgrade (`/ws/agent` when the URL has none).
    pub path: String,
    /// The URL the upgrade request is made to (`wss://authority/path`).
    pub url: String,
}

/// Parses and checks `outbound.backend_url`: `wss://` only, a host, no credentials.
pub fn parse_backend_url(url: &str) -> Result<BackendUrl, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("wss") => {}
        Some("ws") => {
            return Err(format!(
                "{url:?} is plain ws://; the hub is only reached over TLS (wss://)"
            ))
        }
        _ => return Err(format!("{url:?} must start with wss://")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?} must not carry credentials"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => agentmesh_protocol::HUB_PATH.to_owned(),
        Some(p) => p.to_owned(),
    };
    Ok(BackendUrl {
        host,
        port: authority.port_u16().unwrap_or(443),
        url: format!("wss://{}{path}", authority.as_str()),
        path,
    })
}

fn validate_limits(config: &GatewayConfig) -> Result<(), Problem> {
    let limits = &config.limits;
    if !(1..=1024).contains(&limits.max_concurrency) {
        return Err(problem(
            "limits.max_concurrency",
            "must be between 1 and 1024",
        ));
    }
    if limits.commands_per_minute == 0 {
        return Err(problem("limits.commands_per_minute", "must be at least 1"));
    }
    Ok(())
}

fn validate_verb(key: &str, verb: &VerbConfig, max_message_bytes: usize) -> Result<(), Problem> {
    let at = |field: &str| format!("{key}.{field}");
    let name_ok = verb.name.len() <= 64
        && verb.name.starts_with(|c: char| c.is_ascii_lowercase())
        && verb
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if !name_ok {
        return Err(problem(
            at("name"),
            format!(
                "{:?}: verb names are 1 to 64 characters of a-z, 0-9, '_', '-', '.' starting with a letter",
                verb.name
            ),
        ));
    }
    if BUILTIN_VERB_NAMES.contains(&verb.name.as_str()) {
        return Err(problem(
            at("name"),
            format!("{:?} is a built-in verb and cannot be redefined", verb.name),
        ));
    }
    if !verb.program.is_absolute() {
        return Err(problem(
            at("program"),
            format!(
                "{} must be an absolute path (no $PATH lookup)",
                verb.program.display()
            ),
        ));
    }
    if !(1..=86_400).contains(&verb.timeout_secs) {
        return Err(problem(at("timeout_secs"), "must be between 1 and 86400"));
    }
    if verb.max_output_bytes == 0 || verb.max_output_bytes.saturating_mul(2) > max_message_bytes {
        return Err(problem(
            at("max_output_bytes"),
            format!(
                "must be between 1 and half of outbound.max_message_bytes ({}): stdout and \
                 stderr each get the cap and must fit in one result frame",
                max_message_bytes / 2
            ),
        ));
    }
    if let Some(user) = &verb.run_as {
        if user.is_empty() || has_control(user) || user.contains([' ', ':', '/']) {
            return Err(problem(
                at("run_as"),
                format!("{user:?} is not a user name"),
            ));
        }
    }
    if let Some(dir) = &verb.working_dir {
        if !dir.is_absolute() {
            return Err(problem(at("working_dir"), "must be an absolute path"));
        }
    }
    for (i, name) in verb.env.iter().enumerate() {
        if !is_param_name(name) {
            return Err(problem(
                format!("{key}.env[{i}]"),
                format!("{name:?} is not an environment variable name"),
            ));
        }
    }
    let mut used = BTreeSet::new();
    for (i, arg) in verb.args.iter().enumerate() {
        let arg_key = format!("{key}.args[{i}]");
        if arg.contains('\0') {
            return Err(problem(arg_key, "must not contain NUL"));
        }
        for segment in parse_template(arg).map_err(|m| problem(&arg_key, m))? {
            if let Segment::Param(name) = segment {
                if !verb.params.contains_key(&name) {
                    return Err(problem(
                        arg_key,
                        format!("{{{name}}} is not a declared parameter of this verb"),
                    ));
                }
                used.insert(name);
            }
        }
    }
    for (name, param) in &verb.params {
        let param_key = format!("{key}.params.{name}");
        if !is_param_name(name) {
            return Err(problem(
                param_key,
                "parameter names are [A-Za-z_][A-Za-z0-9_]*, at most 64 characters",
            ));
        }
        if !used.contains(name) {
            return Err(problem(
                param_key,
                format!("declared but never used in {key}.args"),
            ));
        }
        validate_param(&param_key, param)?;
    }
    Ok(())
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

pub(super) fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
