//! [`TestAgent`]: a real gateway agent started from a real `gateway.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// How `run_with_state` ended (None while it runs), kept so a startup error is reported
    /// at once instead of as a "never connected" timeout later.
    outcome: Arc<Mutex<Option<Result<(), String>>>>,
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
        let outcome = Arc::new(Mutex::new(None));
        let task_outcome = outcome.clone();
        let task = tokio::spawn(async move {
            let result = gateway_agent::run_with_state(config, task_state, async move {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| e.to_string());
            *task_outcome.lock().unwrap() = Some(result);
        });
        TestAgent {
            state,
            config_path,
            stop: Some(stop),
            task: Some(task),
            outcome,
        }
    }

    /// How the agent ended, or None while it is still running.
    pub fn exited(&self) -> Option<Result<(), String>> {
        if let Some(done) = self.outcome.lock().unwrap().clone() {
            return Some(done);
        }
        // Finished without recording an outcome: the agent task panicked or was aborted.
        self.task
            .as_ref()
            .filter(|t| t.is_finished())
            .map(|_| Err("the agent task panicked".to_owned()))
    }

    /// Panics if the agent has stopped on its own (a startup or run error), naming the error.
    pub fn assert_running(&self) {
        if let Some(outcome) = self.exited() {
            panic!("agent {} exited: {outcome:?}", self.config_path.display());
        }
    }

    /// Waits until the hub lists `id` as connected, failing at once if the agent exits.
    pub async fn wait_connected(&self, hub: &crate::TestHub, id: &str) {
        crate::eventually(&format!("{id} connected"), crate::PATIENCE, || async {
            self.assert_running();
            hub.is_connected(id)
        })
        .await;
    }

    /// Stops the agent, waits for it and returns how it ended (a panic in it is re-raised).
    pub async fn stop_outcome(mut self) -> Result<(), String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            if let Err(e) = t.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        let outcome = self.outcome.lock().unwrap().clone();
        outcome.unwrap_or(Err("the agent task was aborted".to_owned()))
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
        agent.wait_connected(hub, id).await;
        agent
    }

    /// Stops the agent and waits for it; a panic inside the agent fails the test, and an
    /// error it ended with is printed (some tests stop agents the hub has refused).
    pub async fn stop(self) {
        let path = self.config_path.clone();
        if let Err(e) = self.stop_outcome().await {
            eprintln!("agent {} ended with: {e}", path.display());
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
