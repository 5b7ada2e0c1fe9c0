//! TLS and WebSocket settings of the floor: the hub's own server config and buffer sizes, the
//! agent's client buffer sizes, certificates from `mesh-certs`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use mesh_certs::Issued;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// Largest message (the hub's default, `agentmesh_protocol::DEFAULT_MAX_MESSAGE_BYTES`).
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// A client-side WebSocket over mutual TLS.
pub type ClientWs = WebSocketStream<TlsStream<TcpStream>>;

/// The hub's TLS server config (mandatory client certificates, no resumption) for the PKI in
/// `dir` (`server/`, `ca/`).
pub fn acceptor(dir: &Path) -> Result<TlsAcceptor> {
    let (config, _) = backend_agent::hub::tls::server_config(
        &dir.join("server/cert.pem"),
        &dir.join("server/key.pem"),
        &dir.join("ca/ca.pem"),
    )
    .map_err(|e| anyhow::anyhow!("raw server TLS: {e}"))?;
    Ok(TlsAcceptor::from(config))
}

/// The hub's WebSocket buffer sizes (`HubContext::ws_config`).
pub fn server_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE * 2)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A client config presenting `identity`, trusting the mesh CA.
pub fn client_config(identity: &Issued) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
        roots.add(c.context("CA PEM")?)?;
    }
    let certs = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).context("key PEM")?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// TCP, mutual TLS and the WebSocket upgrade (the agent's buffer sizes) to `addr`.
pub async fn dial(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Result<ClientWs> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config.clone())
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let request = format!("wss://{addr}/ws").into_client_request()?;
    let ws_config = gateway_agent::connect::websocket_config(MAX_MESSAGE);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, tls, Some(ws_config)).await?;
    Ok(ws)
}
