//! [`TestAgent`]: a real gateway agent started from a real `gateway.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_agent::config::GatewayConfig;
use gateway_agent::state::AgentState;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process gateway agent.
pub struct TestAgent {
    /// Observable connection state.
    pub state: Arc<AgentState>,
    /// Its config file.
    pub config_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Writes a `gateway.toml` for agent `id` whose certificate lives in `cert_dir`.
pub fn write_config(
    dir: &Path,
    id: &str,
    cert_dir: &Path,
    hub: SocketAddr,
    server_pins: &[&str],
    extra: &str,
) -> PathBuf {
    let state_dir = dir.join(format!("state-{id}"));
    std::fs::create_dir_all(&state_dir).unwrap();
    let pins = server_pins
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let certs = cert_dir.display();
    let text = format!(
        r#"[agent]
id = "{id}"
site = "test-site"
labels = {{ role = "panel", region = "eu" }}
state_dir = "{state}"

[outbound]
backend_url = "wss://127.0.0.1:{port}/ws/agent"
ca = "{certs}/ca.pem"
cert = "{certs}/cert.pem"
key = "{certs}/key.pem"
server_pins = [{pins}]
reconnect_min_ms = 50
reconnect_max_ms = 500

[[verbs]]
name = "echo"
description = "echo its message"
program = "/bin/echo"
args = ["{{message}}"]
timeout_secs = 5
params.message = {{ type = "string", max_len = 64, required = true }}
{extra}
"#,
        state = state_dir.display(),
        port = hub.port(),
    );
    let path = dir.join(format!("gateway-{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

impl TestAgent {
    /// Starts an agent from a config file.
    pub fn start(config_path: PathBuf) -> TestAgent {
        let config = GatewayConfig::load_with_env(&config_path, std::iter::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let state = AgentState::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            let _ = gateway_agent::run_with_state(config, task_state, async move {
                let _ = stopped.await;
            })
            .await;
        });
        TestAgent {
            state,
            config_path,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Writes a standard config for `id` (certificate in `cert_dir`), starts the agent and
    /// waits until the hub lists it as connected.
    pub async fn connect(
        pki: &crate::Pki,
        hub: &crate::TestHub,
        id: &str,
        cert_dir: &Path,
    ) -> TestAgent {
        let cfg = write_config(pki.path(), id, cert_dir, hub.hub, &[&hub.server_pin], "");
        let agent = TestAgent::start(cfg);
        crate::eventually(&format!("{id} connected"), crate::PATIENCE, || async {
            hub.is_connected(id)
        })
        .await;
        agent
    }

    /// Stops the agent and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
