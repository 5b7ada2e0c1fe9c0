//! A hand-driven TLS WebSocket client that can misbehave on purpose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use mesh_certs::Issued;

/// A WebSocket session with the hub, driven by the test.
pub struct RawClient {
    /// The socket.
    pub ws: WebSocketStream<TlsStream<TcpStream>>,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient").finish_non_exhaustive()
    }
}

fn client_config(ca_pem: &str, identity: Option<&Issued>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some(id) => {
            let certs = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

/// TLS to the hub with `identity` (or none); the error is the handshake's.
pub async fn tls(
    hub: SocketAddr,
    ca_pem: &str,
    identity: Option<&Issued>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(client_config(ca_pem, identity)));
    let tcp = TcpStream::connect(hub).await?;
    let name = ServerName::IpAddress(hub.ip().into());
    connector.connect(name, tcp).await
}

/// TLS plus the WebSocket upgrade on `/ws/agent`.
pub async fn connect(
    hub: SocketAddr,
    ca_pem: &str,
    identity: &Issued,
) -> Result<RawClient, String> {
    connect_with_headers(hub, ca_pem, identity, &[]).await
}

/// Like [`connect`], with extra HTTP headers on the upgrade request.
pub async fn connect_with_headers(
    hub: SocketAddr,
    ca_pem: &str,
    identity: &Issued,
    headers: &[(&'static str, String)],
) -> Result<RawClient, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = tls(hub, ca_pem, Some(identity))
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let mut request = format!("wss://{hub}/ws/agent")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    for (name, value) in headers {
        request.headers_mut().insert(
            *name,
            value.parse().map_err(|_| "bad header value".to_owned())?,
        );
    }
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    Ok(RawClient { ws })
}

/// Connects as `agent_id`, says `hello` and returns the client with the `welcome` frame.
pub async fn session(
    hub: SocketAddr,
    ca_pem: &str,
    identity: &Issued,
    agent_id: &str,
) -> (RawClient, Value) {
    let mut client = connect(hub, ca_pem, identity).await.unwrap();
    client.send_json(&hello(agent_id, 1)).await;
    let welcome = client
        .next_json(Duration::from_secs(20))
        .await
        .expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
}

/// Connects with `identity` and says `hello` as `agent_id`: `Ok` on the `welcome`, else the
/// close code and reason (code 0: the connection failed or another frame came first).
pub async fn admitted(
    hub: SocketAddr,
    ca_pem: &str,
    identity: &Issued,
    agent_id: &str,
) -> Result<(), (u16, String)> {
    let mut c = connect(hub, ca_pem, identity).await.map_err(|e| (0, e))?;
    // A refused identity is closed right after the upgrade, possibly before the hello lands.
    let _ = c.send_text(&hello(agent_id, 1).to_string()).await;
    match c.next_or_close(crate::PATIENCE).await? {
        v if v["type"] == "welcome" => Ok(()),
        other => Err((0, other.to_string())),
    }
}

/// The identity an enrolment (`POST /api/v1/enroll`) or renewal (`renewed`) answer issued,
/// with `key_pem`, the key its CSR was made with; panics on an answer without one.
pub fn issued(answer: &Value, key_pem: String) -> Issued {
    let field = |name: &str| {
        answer[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {answer}"))
            .to_owned()
    };
    Issued {
        cert_pem: field("certificate"),
        key_pem,
        ca_pem: field("ca"),
        pin: field("pin"),
    }
}

/// A `hello` frame for `agent_id`, speaking `protocol`.
pub fn hello(agent_id: &str, protocol: u32) -> Value {
    json!({
        "type": "hello", "protocol": protocol, "agent_id": agent_id, "version": "test",
        "site": "raw", "hostname": "raw-host", "labels": {"kind": "raw"},
        "verbs": [{"name": "ping", "description": "", "params": {}, "timeout_ms": 1000}],
        "max_concurrency": 1, "pending_results": []
    })
}

impl RawClient {
    /// Sends a JSON value as one text message.
    pub async fn send_json(&mut self, v: &Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, s: &str) -> Result<(), String> {
        self.ws
            .send(Message::text(s.to_owned()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next text message as JSON, skipping pings; None on close or timeout.
    pub async fn next_json(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The first text message as JSON, or the close code and reason if the hub closes first.
    pub async fn next_or_close(&mut self, limit: Duration) -> Result<Value, (u16, String)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => return Err((0, "no answer".into())),
            };
            match msg {
                Ok(Message::Text(t)) => {
                    return serde_json::from_str(t.as_str()).map_err(|e| (0, e.to_string()))
                }
                Ok(Message::Close(Some(f))) => return Err((f.code.into(), f.reason.to_string())),
                Ok(Message::Close(None)) => return Err((1005, String::new())),
                Ok(_) => continue,
                Err(e) => return Err((0, e.to_string())),
            }
        }
    }

    /// Plays the agent behind a TLS-terminating proxy: after a `welcome` with
    /// `challenge_follows: true` (a certificate forwarded by a trusted proxy) reads the
    /// `challenge` and answers `challenge_response` signed with `key_pem`, the forwarded
    /// certificate's key (`docs/protocol.md`, "Proof of possession"). Does nothing after any
    /// other `welcome`. The hub attaches the session once the answer verifies and says nothing
    /// more; a refused answer is closed 4001.
    pub async fn answer_challenge(
        &mut self,
        welcome: &Value,
        agent_id: &str,
        key_pem: &str,
    ) -> Result<(), (u16, String)> {
        if welcome["challenge_follows"] != true {
            return Ok(());
        }
        let challenge = self.next_or_close(Duration::from_secs(20)).await?;
        if challenge["type"] != "challenge" {
            return Err((0, format!("expected a challenge, got {challenge}")));
        }
        let nonce = challenge["nonce"].as_str().unwrap_or_default();
        let session_id = welcome["session_id"].as_str().unwrap_or_default();
        let key = gateway_agent::session::ProofKey::from_pem(key_pem).map_err(|e| (0, e))?;
        let signature = key
            .sign_challenge(nonce, agent_id, session_id)
            .map_err(|e| (0, e))?;
        self.send_json(&json!({"type": "challenge_response", "signature": signature}))
            .await;
        Ok(())
    }

    /// Renews over this session as `agent_id` with a fresh key: sends `renew`, asserts the
    /// `renewed` answer and returns the new identity.
    pub async fn renew(&mut self, agent_id: &str) -> Issued {
        let (csr, key_pem) = mesh_certs::generate_csr(agent_id).expect("csr");
        self.send_json(&json!({"type": "renew", "csr": csr})).await;
        let renewed = self
            .next_json(crate::PATIENCE)
            .await
            .expect("renewal answered");
        assert_eq!(renewed["type"], "renewed", "{renewed}");
        issued(&renewed, key_pem)
    }

    /// Reads until the hub closes; returns the close code and reason.
    pub async fn close_code(&mut self, limit: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Close(Some(f))) => return Some((f.code.into(), f.reason.to_string())),
                Ok(Message::Close(None)) => return Some((1005, String::new())),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}
