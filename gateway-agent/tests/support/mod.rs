//! A minimal in-test hub: TLS (server certificate from `mesh_certs`, no client auth) and a
//! WebSocket per connection, driven frame by frame by the test.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::{decode_agent_frame, AgentFrame, HubFrame, WelcomeFrame};
use futures_util::{SinkExt as _, StreamExt as _};
use gateway_agent::GatewayConfig;
use mesh_certs::{Ca, Issued, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

/// Old name of [`FakeHub`], still used by renew.rs.
pub type TestHub = FakeHub;

/// Per-test certificates on disk.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub server: Issued,
    pub agent_dir: PathBuf,
}

impl Pki {
    pub fn new(agent_id: &str) -> Pki {
        Pki::with_validity(agent_id, Validity::days(1))
    }

    /// Like [`Pki::new`], with the agent certificate valid for `validity`.
    pub fn with_validity(agent_id: &str, validity: Validity) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("agentmesh test CA").unwrap();
        let server = ca
            .issue_server("localhost", &[], Validity::days(1))
            .unwrap();
        let agent_dir = dir.path().join("agent");
        ca.issue_agent(agent_id, validity)
            .unwrap()
            .save(&agent_dir)
            .unwrap();
        Pki {
            dir,
            ca,
            server,
            agent_dir,
        }
    }

    /// A gateway config for `port` with the given pins, relative TLS paths and fast retries.
    pub fn config(&self, port: u16, pins: &[&str], extra: &str) -> GatewayConfig {
        let pins: Vec<String> = pins.iter().map(|p| format!("{p:?}")).collect();
        let text = format!(
            r#"
[agent]
id = "edge-01"
site = "test-site"
labels = {{ region = "eu", role = "panel" }}
state_dir = "state"

[outbound]
backend_url = "wss://localhost:{port}/ws/agent"
ca = "agent/ca.pem"
cert = "agent/cert.pem"
key = "agent/key.pem"
server_pins = [{pins}]
reconnect_min_ms = 20
reconnect_max_ms = 100

[limits]
max_concurrency = 3

[[verbs]]
name = "create_panel_user"
description = "Creates a panel user"
program = "/usr/local/sbin/create-panel-user"
args = ["--user", "{{username}}"]
params.username = {{ type = "string", pattern = "^[a-z]{{3,8}}$", required = true }}
{extra}
"#,
            pins = pins.join(", ")
        );
        let path = self.dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        GatewayConfig::load_with_env(&path, Vec::new()).unwrap()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's audit log (the config's `state_dir` is `state`).
    pub fn audit_log(&self) -> PathBuf {
        self.path().join("state").join("gateway-audit.log")
    }

    /// Every record of the agent's audit log, after checking that the chain verifies.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        let log = self.audit_log();
        agentmesh_audit::verify_files(std::slice::from_ref(&log)).unwrap();
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The agent certificate as it is on disk now.
    pub fn agent_cert(&self) -> String {
        std::fs::read_to_string(self.agent_dir.join("cert.pem")).unwrap()
    }
}

/// The kinds of `records`, in order.
pub fn kinds(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// What the hub saw on one connection.
#[derive(Debug)]
pub enum Event {
    Frame(AgentFrame),
    Undecodable(String),
    Close(Option<u16>),
    Ended,
}

/// One accepted WebSocket connection.
pub struct Conn {
    pub to_agent: mpsc::Sender<Message>,
    pub from_agent: mpsc::Receiver<Event>,
}

impl Conn {
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(10), self.from_agent.recv())
            .await
            .expect("timed out waiting for the agent")
            .unwrap_or(Event::Ended)
    }

    pub async fn next_frame(&mut self) -> AgentFrame {
        match self.next().await {
            Event::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    pub async fn send(&self, frame: &HubFrame) {
        self.send_text(&frame.to_json()).await;
    }

    pub async fn send_text(&self, text: &str) {
        self.to_agent
            .send(Message::text(text.to_owned()))
            .await
            .unwrap();
    }
}

pub fn welcome(session_id: &str) -> HubFrame {
    HubFrame::Welcome(WelcomeFrame {
        protocol: agentmesh_protocol::PROTOCOL_VERSION,
        session_id: session_id.to_owned(),
        server_time: "2026-11-25T08:00:00Z".to_owned(),
        heartbeat_secs: 20,
        max_message_bytes: 1 << 20,
        signature: None,
        hub_key: None,
        challenge_follows: false,
    })
}

/// A fake hub (TLS without client auth, frames driven by the test) — not the real backend,
/// which the e2e harness's `TestHub` runs; named apart so the two are not confused.
pub struct FakeHub {
    pub addr: SocketAddr,
    pub conns: mpsc::Receiver<Conn>,
    task: JoinHandle<()>,
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeHub {
    pub async fn start(server: &Issued) -> FakeHub {
        let certs = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (conns_tx, conns) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let conns_tx = conns_tx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(ws) = tokio_tungstenite::accept_async(tls).await else {
                        return;
                    };
                    let (to_agent, mut outgoing) = mpsc::channel::<Message>(16);
                    let (events, from_agent) = mpsc::channel(16);
                    if conns_tx
                        .send(Conn {
                            to_agent,
                            from_agent,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let (mut sink, mut stream) = ws.split();
                    loop {
                        tokio::select! {
                            out = outgoing.recv() => match out {
                                Some(m) => { let _ = sink.send(m).await; }
                                None => return,
                            },
                            msg = stream.next() => {
                                let event = match msg {
                                    Some(Ok(Message::Text(t))) => {
                                        match decode_agent_frame(t.as_bytes(), 1 << 20) {
                                            Ok(f) => Event::Frame(f),
                                            Err(e) => Event::Undecodable(e.to_string()),
                                        }
                                    }
                                    Some(Ok(Message::Close(f))) => {
                                        Event::Close(f.map(|f| u16::from(f.code)))
                                    }
                                    Some(Ok(_)) => continue,
                                    None | Some(Err(_)) => {
                                        let _ = events.send(Event::Ended).await;
                                        return;
                                    }
                                };
                                let _ = events.send(event).await;
                            }
                        }
                    }
                });
            }
        });
        FakeHub { addr, conns, task }
    }
}
