//! Opening the transport to the hub: TCP, then TLS with the pinning verifier, then the
//! WebSocket upgrade. Each stage has its own timeout and its own error, so the log says which
//! one failed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self};
use tokio_tungstenite::WebSocketStream;

use crate::config::BackendUrl;
use crate::tls::{HubTls, PinMismatch};

/// Time allowed for each of TCP connect, TLS handshake and WebSocket upgrade.
pub const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket over TLS over TCP that a session runs on.
pub type HubStream = WebSocketStream<TlsStream<TcpStream>>;

/// Why the transport could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A stage did not finish in time.
    #[error("{stage} to {target} timed out after {STAGE_TIMEOUT:?}")]
    Timeout {
        /// `TCP connect`, `TLS handshake` or `WebSocket upgrade`.
        stage: &'static str,
        /// `host:port`.
        target: String,
    },
    /// Name resolution or TCP connect failed.
    #[error("TCP connect to {target}: {source}")]
    Tcp {
        /// `host:port`.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The hub's pin is not one of `outbound.server_pins`.
    #[error("hub pin {} is not in server_pins [{}]", .0.presented, .0.expected.join(", "))]
    PinMismatch(PinMismatch),
    /// The TLS handshake failed for another reason (chain, host name, client certificate).
    #[error("TLS handshake with {target}: {source}")]
    Tls {
        /// `host:port`.
        target: String,
        /// The I/O error carrying rustls' reason.
        source: std::io::Error,
    },
    /// The hub answered the upgrade with an HTTP error.
    #[error("hub answered the WebSocket upgrade with HTTP {status}")]
    Http {
        /// The status code.
        status: StatusCode,
        /// `Retry-After` (seconds form) on 429/503.
        retry_after: Option<Duration>,
    },
    /// The upgrade failed otherwise.
    #[error("WebSocket upgrade: {0}")]
    WebSocket(tungstenite::Error),
    /// The host name is not a valid TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// The WebSocket limits: small buffers (agents are many and mostly idle), messages capped at
/// `max_message_bytes`.
pub fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(8 * 1024 + 2 * max_message_bytes)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Dials `url` and upgrades to a WebSocket.
pub async fn connect(
    url: &BackendUrl,
    tls: &HubTls,
    max_message_bytes: usize,
) -> Result<HubStream, ConnectError> {
    connect_from(url, tls, max_message_bytes, None).await
}

/// [`connect`] from the local address `source` (`outbound.source_addr`) when given.
pub async fn connect_from(
    url: &BackendUrl,
    tls: &HubTls,
    max_message_bytes: usize,
    source: Option<IpAddr>,
) -> Result<HubStream, ConnectError> {
    let target = format!("{}:{}", url.host, url.port);
    let tcp = timeout(STAGE_TIMEOUT, tcp_connect(&url.host, url.port, source))
        .await
        .map_err(|_| ConnectError::Timeout {
            stage: "TCP connect",
            target: target.clone(),
        })?
        .map_err(|source| ConnectError::Tcp {
            target: target.clone(),
            source,
        })?;
    // Agents send small frames; do not let Nagle hold a result back.
    let _ = tcp.set_nodelay(true);

    let server_name = ServerName::try_from(url.host.clone())
        .map_err(|_| ConnectError::ServerName(url.host.clone()))?;
    // Forget mismatches of earlier attempts so only this handshake's is reported.
    let _ = tls.pins.take();
    let tls_stream = timeout(
        STAGE_TIMEOUT,
        TlsConnector::from(tls.config.clone()).connect(server_name, tcp),
    )
    .await
    .map_err(|_| ConnectError::Timeout {
        stage: "TLS handshake",
        target: target.clone(),
    })?
    .map_err(|source| match tls.pins.take() {
        Some(mismatch) => ConnectError::PinMismatch(mismatch),
        None => ConnectError::Tls {
            target: target.clone(),
            source,
        },
    })?;

    let mut request = url
        .url
        .as_str()
        .into_client_request()
        .map_err(ConnectError::WebSocket)?;
    let agent = format!("agentmesh-gateway-agent/{}", env!("CARGO_PKG_VERSION"));
    if let Ok(value) = HeaderValue::from_str(&agent) {
        request.headers_mut().insert(header::USER_AGENT, value);
    }
    let upgrade = tokio_tungstenite::client_async_with_config(
        request,
        tls_stream,
        Some(websocket_config(max_message_bytes)),
    );
    let (ws, _response) = timeout(STAGE_TIMEOUT, upgrade)
        .await
        .map_err(|_| ConnectError::Timeout {
            stage: "WebSocket upgrade",
            target,
        })?
        .map_err(upgrade_error)?;
    Ok(ws)
}

/// The pin of the certificate the hub presented on `ws`.
pub fn hub_pin(ws: &HubStream) -> Option<String> {
    let (_, connection) = ws.get_ref().get_ref();
    let leaf = connection.peer_certificates()?.first()?;
    mesh_certs::pin_from_cert_der(leaf.as_ref()).ok()
}

/// TCP to `host:port`, bound to `source` first when given (each resolved address of the
/// same family is tried in turn, like `TcpStream::connect`).
async fn tcp_connect(host: &str, port: u16, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect((host, port)).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        if addr.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no address of {host} in the family of source_addr {source}"),
        )
    }))
}

fn upgrade_error(e: tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let retry_after = matches!(
                status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
            )
            .then(|| response.headers().get(header::RETRY_AFTER))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
            ConnectError::Http {
                status,
                retry_after,
            }
        }
        other => ConnectError::WebSocket(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http::Response;

    fn http_error(status: u16, retry_after: Option<&str>) -> ConnectError {
        let mut response = Response::builder().status(status);
        if let Some(value) = retry_after {
            response = response.header(header::RETRY_AFTER, value);
        }
        match response.body(None) {
            Ok(r) => upgrade_error(tungstenite::Error::Http(Box::new(r))),
            Err(e) => panic!("{e}"),
        }
    }

    fn retry_after(e: &ConnectError) -> Option<Duration> {
        match e {
            ConnectError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    #[test]
    fn retry_after_is_read_on_503_and_429_only() {
        assert_eq!(
            retry_after(&http_error(503, Some("7"))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&http_error(429, Some(" 2 "))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_after(&http_error(403, Some("7"))), None);
        // The HTTP-date form is not honoured; plain backoff applies.
        assert_eq!(
            retry_after(&http_error(503, Some("Wed, 21 Oct 2015 07:28:00 GMT"))),
            None
        );
        let e = http_error(503, None);
        assert_eq!(retry_after(&e), None);
        assert!(e.to_string().contains("503"), "{e}");
    }

    #[tokio::test]
    async fn source_addr_is_the_local_address_the_hub_sees() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let source: IpAddr = "127.0.0.7".parse().unwrap();
        let (dialed, accepted) = tokio::join!(
            tcp_connect("127.0.0.1", port, Some(source)),
            listener.accept()
        );
        assert_eq!(dialed.unwrap().local_addr().unwrap().ip(), source);
        assert_eq!(accepted.unwrap().1.ip(), source);
        let plain = tcp_connect("127.0.0.1", port, None).await.unwrap();
        assert_eq!(plain.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    }
}
