//! `agentmesh-dev`: the quick start.
//!
//! Makes (once) a CA, a server certificate for localhost, one agent certificate, configs and
//! an admin token under `./dev-state`, then runs the backend and one gateway agent in this
//! process and prints what to try. Ctrl-C stops both.
//!
//! A crate of its own because it is the one place that links both daemons: the control plane
//! library (`backend-agent`) does not link the agent's executor.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gateway_agent::config::GatewayConfig;
use mesh_certs::{Ca, Issued, Validity};

use backend_agent::auth::{new_token, token_sha256_hex};
use backend_agent::config::BackendConfig;
use backend_agent::{Backend, Listeners};

/// Options of `agentmesh-dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevOptions {
    /// Where certificates, configs, token and state live.
    #[arg(long, default_value = "dev-state")]
    pub dir: PathBuf,
    /// Operator API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Hub address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub hub: SocketAddr,
}

/// Id of the quick start's agent.
pub const DEV_AGENT_ID: &str = "dev-agent-01";
const TOKEN_FILE: &str = "admin.token";

/// Everything `prepare` made or found.
#[derive(Debug)]
pub struct DevState {
    /// The backend config file.
    pub backend_toml: PathBuf,
    /// The gateway agent config file.
    pub gateway_toml: PathBuf,
    /// The admin token in clear.
    pub token: String,
    /// The hub's pin (for another agent's `server_pins`).
    pub server_pin: String,
}

/// Creates what is missing under `opts.dir` and (re)writes both configs.
pub fn prepare(opts: &DevOptions) -> Result<DevState> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join(mesh_certs::CA_KEY_FILE).exists() {
        Ca::load(&ca_dir).context("loading the dev CA")?
    } else {
        let ca = Ca::generate("agentmesh dev CA")?;
        ca.save(&ca_dir)?;
        ca
    };
    let server_dir = dir.join("server");
    let server_pin = ensure_leaf(&server_dir, || {
        let sans = vec!["127.0.0.1".to_owned(), "::1".to_owned()];
        Ok(ca.issue_server("localhost", &sans, Validity::days(365))?)
    })?;
    let agent_dir = dir.join("agent");
    let agent_pin = ensure_leaf(&agent_dir, || {
        Ok(ca.issue_agent(DEV_AGENT_ID, Validity::days(365))?)
    })?;
    let token_path = dir.join(TOKEN_FILE);
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            let t = new_token();
            mesh_certs::write_private(&token_path, &format!("{t}\n"))?;
            t
        }
    };

    let backend_toml = dir.join("backend.toml");
    let backend = format!(
        r#"# Written by `agentmesh-dev`; rewritten on every run.
[http]
listen = "{http}"

[hub]
listen = "{hub}"
cert = "server/cert.pem"
key = "server/key.pem"
client_ca = "ca/ca.pem"

[store]
path = "backend.db"

[audit]
path = "audit.log"

[ca]
cert = "ca/ca.pem"
key = "ca/ca-key.pem"

[[agents]]
id = "{DEV_AGENT_ID}"
pins = ["{agent_pin}"]

[[tokens]]
name = "dev-admin"
sha256 = "{hash}"
role = "admin"
"#,
        http = opts.http,
        hub = opts.hub,
        hash = token_sha256_hex(&token),
    );
    std::fs::write(&backend_toml, backend)
        .with_context(|| format!("writing {}", backend_toml.display()))?;

    let gateway_toml = dir.join("gateway.toml");
    let gateway = format!(
        r#"# Written by `agentmesh-dev`; rewritten on every run.
[agent]
id = "{DEV_AGENT_ID}"
site = "dev"
labels = {{ env = "dev", role = "demo" }}
state_dir = "agent-state"

[outbound]
backend_url = "wss://localhost:{port}/ws/agent"
ca = "agent/ca.pem"
cert = "agent/cert.pem"
key = "agent/key.pem"
server_pins = ["{server_pin}"]
reconnect_min_ms = 200
reconnect_max_ms = 5000

[[verbs]]
name = "echo"
description = "Echoes its message back (demo verb)"
program = "/bin/echo"
args = ["{{message}}"]
timeout_secs = 5
params.message = {{ type = "string", max_len = 256, required = true }}
"#,
        port = opts.hub.port(),
    );
    std::fs::write(&gateway_toml, gateway)
        .with_context(|| format!("writing {}", gateway_toml.display()))?;
    std::fs::create_dir_all(dir.join("agent-state"))?;
    Ok(DevState {
        backend_toml,
        gateway_toml,
        token,
        server_pin,
    })
}

/// Reuses a leaf certificate in `dir` or issues one; returns its pin.
fn ensure_leaf(dir: &Path, issue: impl FnOnce() -> Result<Issued>) -> Result<String> {
    let cert = dir.join(mesh_certs::CERT_FILE);
    if cert.exists() && dir.join(mesh_certs::KEY_FILE).exists() {
        let pem = std::fs::read_to_string(&cert)
            .with_context(|| format!("reading {}", cert.display()))?;
        return Ok(mesh_certs::pin_from_pem(&pem)?);
    }
    let issued = issue()?;
    issued.save(dir)?;
    Ok(issued.pin)
}

/// Loads both configs, with the `AGENTMESH_*` overrides in `env` applied to the backend's
/// only. Both run in this process, so the same variables would otherwise point both audit
/// writers at one file (`AGENTMESH_AUDIT_PATH`), and a `[limits]` key of one config is an
/// unknown override to the other. The agent's config is the one `prepare` wrote, as is.
fn load_configs(
    state: &DevState,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(BackendConfig, GatewayConfig)> {
    let backend = BackendConfig::load_with_env(&state.backend_toml, env)?;
    let gateway = GatewayConfig::load_with_env(&state.gateway_toml, std::iter::empty())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((backend, gateway))
}

/// Runs the quick start until Ctrl-C (or SIGTERM).
pub async fn run(opts: DevOptions) -> Result<()> {
    let shutdown = agentmesh_daemon::shutdown_signal();
    let state = prepare(&opts)?;
    let (config, gateway) = load_configs(&state, std::env::vars())?;
    let listeners = Listeners::bind(&config)
        .await
        .context("is another backend (or `agentmesh-dev`) already running? pass --http/--hub to use other ports")?;
    let backend = Backend::start(listeners, config).await?;

    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(gateway_agent::run(gateway, async move {
        let _ = agent_stopped.await;
    }));

    print_next_steps(&opts, &state);
    shutdown.await;
    let _ = stop_agent.send(());
    if let Ok(Err(e)) = agent.await {
        tracing::warn!(error = %e, "gateway agent stopped with an error");
    }
    backend.shutdown().await?;
    Ok(())
}

fn print_next_steps(opts: &DevOptions, state: &DevState) {
    let api = format!("http://{}", opts.http);
    let t = &state.token;
    println!(
        r#"
agentmesh dev is running: backend API {api}, hub wss://localhost:{hub_port}/ws/agent,
one gateway agent "{DEV_AGENT_ID}" (state, certificates and configs in {dir}).

Admin token (also in {dir}/{TOKEN_FILE}):
  export TOKEN={t}

Try:
  curl -s {api}/health
  curl -s -H "Authorization: Bearer $TOKEN" {api}/api/v1/agents
  curl -s -H "Authorization: Bearer $TOKEN" {api}/api/v1/agents/{DEV_AGENT_ID}
  curl -s -H "Authorization: Bearer $TOKEN" -d '{{"verb":"ping","wait":true}}' {api}/api/v1/agents/{DEV_AGENT_ID}/commands
  curl -s -H "Authorization: Bearer $TOKEN" -d '{{"verb":"echo","args":{{"message":"hi; $(id)"}},"wait":true}}' {api}/api/v1/agents/{DEV_AGENT_ID}/commands
  curl -s -H "Authorization: Bearer $TOKEN" -d '{{"selector":{{"labels":{{"env":"dev"}}}},"verb":"sysinfo"}}' {api}/api/v1/commands
  curl -s -H "Authorization: Bearer $TOKEN" "{api}/api/v1/commands?limit=5"
  curl -s {api}/metrics
  curl -sN -H "Authorization: Bearer $TOKEN" {api}/api/v1/events

The fleet page (the token moves to this tab's sessionStorage; a fragment never reaches the server):
  {api}/ui/#token={t}

meshctl (cargo build --release -p meshctl; docs/meshctl.md):
  export AGENTMESH_URL={api} AGENTMESH_TOKEN=$TOKEN
  meshctl agents
  meshctl run {DEV_AGENT_ID} echo message=hi

Add another agent (hub pin {server_pin}):
  curl -s -H "Authorization: Bearer $TOKEN" -d '{{"agent_id":"edge-02","ttl_secs":3600}}' {api}/api/v1/enrollments
  gateway-agent enroll --api {api} --token <token> --id edge-02 --ca {dir}/ca/ca.pem --out edge-02/

Ctrl-C stops both."#,
        hub_port = opts.hub.port(),
        dir = opts.dir.display(),
        server_pin = state.server_pin,
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn env_overrides_reach_the_backend_config_only() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = DevOptions {
            dir: tmp.path().join("dev-state"),
            http: "127.0.0.1:0".parse().unwrap(),
            hub: "127.0.0.1:0".parse().unwrap(),
        };
        let state = prepare(&opts).unwrap();
        let audit = tmp.path().join("elsewhere.log");
        let env = [
            ("AGENTMESH_AUDIT_PATH", audit.to_str().unwrap()),
            // A backend `[limits]` key: an unknown override to the agent's config.
            ("AGENTMESH_LIMITS_OPERATOR_BURST", "7"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let (backend, gateway) = load_configs(&state, env.into_iter()).unwrap();
        assert_eq!(backend.audit.path, audit);
        assert_eq!(backend.limits.operator_burst, 7);
        // The agent keeps its own log, in its own state directory (resolved once).
        assert_eq!(
            gateway.audit_path(),
            opts.dir.join("agent-state").join("gateway-audit.log")
        );
        assert_eq!(gateway.agent.state_dir, opts.dir.join("agent-state"));
    }
}
