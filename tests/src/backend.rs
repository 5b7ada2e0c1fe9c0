//! [`TestHub`]: a real backend started from a real `backend.toml` on ephemeral ports.

use std::net::SocketAddr;
use std::path::PathBuf;

use backend_agent::auth::token_sha256_hex;
use backend_agent::config::BackendConfig;
use backend_agent::{Backend, Listeners};

use crate::pki::Pki;

/// Knobs a test may turn.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// `[hub].heartbeat_secs`.
    pub heartbeat_secs: u64,
    /// `[hub].hello_timeout_secs`.
    pub hello_timeout_secs: u64,
    /// `[hub].handshake_timeout_secs`.
    pub handshake_timeout_secs: u64,
    /// The `[limits]` table (tests about other things turn the per-address limit off, since
    /// every test peer comes from 127.0.0.1).
    pub limits: String,
    /// Extra TOML merged into the config: tables merge key by key (so `[hub]\nx = 1` lands in
    /// `[hub]`), arrays of tables such as `[[tokens]]` are appended, other values replace.
    pub extra: String,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            heartbeat_secs: 20,
            hello_timeout_secs: 10,
            handshake_timeout_secs: 10,
            limits: "[limits]\nhub_connects_per_ip_per_sec = 0\n".to_owned(),
            extra: String::new(),
        }
    }
}

/// Tokens of each role the test config enables.
pub const ADMIN_TOKEN: &str = "amt_test_admin_token";
/// Operator role.
pub const OPERATOR_TOKEN: &str = "amt_test_operator_token";
/// Viewer role.
pub const VIEWER_TOKEN: &str = "amt_test_viewer_token";

/// A running backend and how to reach it.
pub struct TestHub {
    /// The running backend (None while stopped).
    pub backend: Option<Backend>,
    /// The config file it was started from.
    pub config_path: PathBuf,
    /// Operator API address.
    pub http: SocketAddr,
    /// Hub address.
    pub hub: SocketAddr,
    /// The hub's pin (for agents' `server_pins`).
    pub server_pin: String,
    enrolled: Vec<(String, String)>,
    options: HubOptions,
    dir: PathBuf,
}

impl TestHub {
    /// Starts a backend with `agents` (id, pin) statically enrolled.
    pub async fn start(pki: &Pki, agents: &[(&str, &str)]) -> TestHub {
        Self::start_with(pki, agents, HubOptions::default()).await
    }

    /// Starts a backend with options.
    pub async fn start_with(pki: &Pki, agents: &[(&str, &str)], options: HubOptions) -> TestHub {
        let dir = tempfile::Builder::new()
            .prefix("backend-")
            .tempdir_in(pki.path())
            .unwrap()
            .keep();
        let mut hub = TestHub {
            backend: None,
            config_path: dir.join("backend.toml"),
            http: "127.0.0.1:0".parse().unwrap(),
            hub: "127.0.0.1:0".parse().unwrap(),
            server_pin: pki.server.pin.clone(),
            enrolled: agents
                .iter()
                .map(|(a, p)| (a.to_string(), p.to_string()))
                .collect(),
            options,
            dir,
        };
        hub.launch(pki).await;
        hub
    }

    /// The backend config as TOML for the current addresses.
    pub fn config_toml(&self, pki: &Pki) -> String {
        let root = pki.path().display();
        let mut t = format!(
            r#"[http]
listen = "{http}"

[hub]
listen = "{hub}"
cert = "{root}/server/cert.pem"
key = "{root}/server/key.pem"
client_ca = "{root}/ca/ca.pem"
heartbeat_secs = {hb}
hello_timeout_secs = {hello}
handshake_timeout_secs = {hs}

[store]
path = "{dir}/backend.db"

[audit]
path = "{dir}/audit.log"

[ca]
cert = "{root}/ca/ca.pem"
key = "{root}/ca/ca-key.pem"

[[tokens]]
name = "test-admin"
sha256 = "{admin}"
role = "admin"

[[tokens]]
name = "test-operator"
sha256 = "{operator}"
role = "operator"

[[tokens]]
name = "test-viewer"
sha256 = "{viewer}"
role = "viewer"
"#,
            http = self.http,
            hub = self.hub,
            hb = self.options.heartbeat_secs,
            hello = self.options.hello_timeout_secs,
            hs = self.options.handshake_timeout_secs,
            dir = self.dir.display(),
            admin = token_sha256_hex(ADMIN_TOKEN),
            operator = token_sha256_hex(OPERATOR_TOKEN),
            viewer = token_sha256_hex(VIEWER_TOKEN),
        );
        t.push('\n');
        t.push_str(&self.options.limits);
        for (id, pin) in &self.enrolled {
            t.push_str(&format!(
                "\n[[agents]]\nid = \"{id}\"\npins = [\"{pin}\"]\n"
            ));
        }
        merge_toml(&t, &self.options.extra)
    }

    /// Merges `patch` (TOML) into the config file on disk, for [`Self::restart_from_file`].
    pub fn patch_config(&self, patch: &str) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, merge_toml(&text, patch)).unwrap();
    }

    /// The directory holding this backend's config, store and audit log.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The audit log's path.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    async fn launch(&mut self, pki: &Pki) {
        std::fs::write(&self.config_path, self.config_toml(pki)).unwrap();
        let config = BackendConfig::load_with_env(&self.config_path, std::iter::empty()).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let backend = Backend::start(listeners, config).await.unwrap();
        self.http = backend.http_addr;
        self.hub = backend.hub_addr;
        // Pin the chosen ports in the file so a restart comes back on the same ones.
        std::fs::write(&self.config_path, self.config_toml(pki)).unwrap();
        self.backend = Some(backend);
    }

    /// The running backend.
    pub fn backend(&self) -> &Backend {
        self.backend.as_ref().expect("backend is running")
    }

    /// Aborts the in-process backend without draining. This is NOT a crash: the aborted tasks
    /// and the old audit writer may outlive it and keep writing to the files a restarted
    /// instance opens. Crash claims belong to [`crate::process::BackendProcess::kill_9`].
    pub fn abort(&mut self) {
        if let Some(b) = self.backend.take() {
            b.abort();
        }
    }

    /// Old name of [`Self::abort`] (not a crash; see there), kept for existing tests.
    pub fn kill(&mut self) {
        self.abort();
    }

    /// Writes a config for a real `backend-agent` process (listening on `:0`, which it
    /// reports) without starting anything in-process; returns the config path.
    pub fn write_process_config(
        pki: &Pki,
        agents: &[(&str, &str)],
        options: HubOptions,
    ) -> PathBuf {
        let dir = tempfile::Builder::new()
            .prefix("backend-")
            .tempdir_in(pki.path())
            .unwrap()
            .keep();
        let hub = TestHub {
            backend: None,
            config_path: dir.join("backend.toml"),
            http: "127.0.0.1:0".parse().unwrap(),
            hub: "127.0.0.1:0".parse().unwrap(),
            server_pin: pki.server.pin.clone(),
            enrolled: agents
                .iter()
                .map(|(a, p)| (a.to_string(), p.to_string()))
                .collect(),
            options,
            dir,
        };
        std::fs::write(&hub.config_path, hub.config_toml(pki)).unwrap();
        hub.config_path.clone()
    }

    /// Starts the backend again on the same ports (after an [`Self::abort`], not a crash).
    pub async fn restart(&mut self, pki: &Pki) {
        self.abort();
        // The aborted tasks release the listeners asynchronously; retry the bind briefly.
        for _ in 0..100 {
            let config =
                BackendConfig::load_with_env(&self.config_path, std::iter::empty()).unwrap();
            match Listeners::bind(&config).await {
                Ok(listeners) => {
                    self.backend = Some(Backend::start(listeners, config).await.unwrap());
                    return;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        let _ = pki;
        panic!("could not rebind the backend's ports");
    }

    /// Restarts from the config file as it is now on disk (tests edit it in between).
    pub async fn restart_from_file(&mut self) {
        if let Some(b) = self.backend.take() {
            b.shutdown().await.unwrap();
        }
        let config = BackendConfig::load_with_env(&self.config_path, std::iter::empty()).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        self.backend = Some(Backend::start(listeners, config).await.unwrap());
    }

    /// Whether `id` has a live session.
    pub fn is_connected(&self, id: &str) -> bool {
        self.backend
            .as_ref()
            .and_then(|b| b.registry.get(id))
            .is_some_and(|a| a.connected)
    }

    /// Waits until `id`'s current session is the one `welcome` announced (attached: for a
    /// certificate forwarded by a proxy, only once the challenge is answered).
    pub async fn attached(&self, id: &str, welcome: &serde_json::Value) {
        let session_id = welcome["session_id"].as_str().map(str::to_owned);
        crate::eventually(&format!("{id} attached"), crate::PATIENCE, || async {
            self.backend
                .as_ref()
                .and_then(|b| b.registry.get(id))
                .is_some_and(|a| a.connected && a.session_id == session_id)
        })
        .await;
    }

    /// Gracefully stops the backend.
    pub async fn stop(mut self) {
        if let Some(b) = self.backend.take() {
            b.shutdown().await.unwrap();
        }
    }
}

/// `base` with `patch` merged in (see [`HubOptions::extra`]); panics on invalid TOML.
pub fn merge_toml(base: &str, patch: &str) -> String {
    let mut doc: toml::Table = base
        .parse()
        .unwrap_or_else(|e| panic!("config is not TOML: {e}\n{base}"));
    let patch: toml::Table = patch
        .parse()
        .unwrap_or_else(|e| panic!("patch is not TOML: {e}\n{patch}"));
    merge_tables(&mut doc, patch);
    toml::to_string(&doc).unwrap()
}

fn merge_tables(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_tables(a, b),
            (Some(toml::Value::Array(a)), toml::Value::Array(b))
                if b.iter().all(toml::Value::is_table) =>
            {
                a.extend(b)
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}
