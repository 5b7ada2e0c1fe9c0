//! A small HTTP/1.1 client for the API: hyper over TCP, or over rustls with the CA from
//! `--ca` for an https front door. One connection per request (a CLI makes few), a deadline on
//! connecting and on every exchange, answers read with a size limit.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::profile::Connection;
use crate::Error;

/// Deadline for TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of an ordinary API exchange.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest JSON answer read (history with output can be large); beyond it the read fails.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Where the API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://`.
    pub https: bool,
    /// Host name or address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
    /// Path prefix the API lives under (no trailing slash), e.g. "" or "/agentmesh".
    pub base_path: String,
}

/// Parses `http[s]://host[:port][/prefix]`.
pub fn parse_url(url: &str) -> Result<Target, Error> {
    let bad = |why: &str| Error::usage(format!("bad URL {url:?}: {why}"));
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("it must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        None if https => 443,
        None => 80,
    };
    Ok(Target {
        https,
        host: host.to_owned(),
        port,
        authority: authority.to_owned(),
        base_path: path.to_owned(),
    })
}

/// An API client.
#[derive(Clone)]
pub struct Client {
    target: Target,
    token: String,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.target)
            .finish()
    }
}

/// A streaming answer (the event stream).
pub struct Streaming {
    /// Status.
    pub status: StatusCode,
    /// The body, read frame by frame.
    pub body: Incoming,
}

impl Client {
    /// A client for `conn`; https needs `--ca`.
    pub fn new(conn: &Connection) -> Result<Client, Error> {
        let target = parse_url(&conn.url)?;
        let tls = match (&target.https, &conn.ca) {
            (false, _) => None,
            (true, None) => return Err(Error::usage(
                "an https:// URL needs --ca FILE (the CA that signed the front door's certificate)",
            )),
            (true, Some(ca)) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| Error::usage(format!("--ca {}: {e}", ca.display())))?;
                for cert in certs {
                    let cert =
                        cert.map_err(|e| Error::usage(format!("--ca {}: {e}", ca.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| Error::usage(format!("--ca {}: {e}", ca.display())))?;
                }
                if roots.is_empty() {
                    return Err(Error::usage(format!(
                        "--ca {}: no certificate in it",
                        ca.display()
                    )));
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| Error::Local(format!("TLS setup: {e}")))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(TlsConnector::from(Arc::new(config)))
            }
        };
        Ok(Client {
            target,
            token: conn.token.0.clone(),
            tls,
        })
    }

    /// The base URL, for messages.
    pub fn describe(&self) -> String {
        let scheme = if self.target.https { "https" } else { "http" };
        format!(
            "{scheme}://{}{}",
            self.target.authority, self.target.base_path
        )
    }

    async fn open(&self) -> Result<http1::SendRequest<Full<Bytes>>, Error> {
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::Unreachable(format!(
                "cannot reach the backend at {}: {e}",
                self.describe()
            ))
        };
        let connect = async {
            let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
                .await
                .map_err(|e| unreachable(&e))?;
            match &self.tls {
                None => handshake(tcp).await,
                Some(tls) => {
                    let name = ServerName::try_from(self.target.host.clone())
                        .map_err(|e| Error::usage(format!("bad host name: {e}")))?;
                    let stream = tls
                        .connect(name, tcp)
                        .await
                        .map_err(|e| unreachable(&format!("TLS: {e}")))?;
                    handshake(stream).await
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(&format!("no connection within {CONNECT_TIMEOUT:?}")))?
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, Error> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.target.base_path))
            .header(header::HOST, &self.target.authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(
                header::USER_AGENT,
                concat!("meshctl/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(bytes))
            .map_err(|e| Error::usage(format!("bad request {path:?}: {e}")))
    }

    /// One JSON exchange with the default deadline; a non-2xx answer becomes [`Error::Api`].
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        self.json_within(method, path, body, REQUEST_TIMEOUT).await
    }

    /// `GET` with the default deadline.
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        self.json(Method::GET, path, None).await
    }

    /// One JSON exchange within `limit`.
    pub async fn json_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        limit: Duration,
    ) -> Result<Value, Error> {
        let (status, bytes) = self.exchange(method, path, body, limit).await?;
        decode(status, &bytes)
    }

    /// `GET` of a text document (`/metrics`); a non-2xx answer is an error.
    pub async fn text(&self, path: &str) -> Result<String, Error> {
        let (status, bytes) = self
            .exchange(Method::GET, path, None, REQUEST_TIMEOUT)
            .await?;
        if !status.is_success() {
            return decode(status, &bytes).map(|_| String::new());
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), Error> {
        let request = self.request(method, path, body)?;
        let exchange = async {
            let mut sender = self.open().await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| Error::Unreachable(format!("{}: {e}", self.describe())))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| Error::Unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        tokio::time::timeout(limit, exchange).await.map_err(|_| {
            Error::Timeout(format!(
                "no answer from {} within {limit:?}",
                self.describe()
            ))
        })?
    }

    /// Opens a streaming `GET` (the event stream); the caller reads the body.
    pub async fn stream(&self, path: &str) -> Result<Streaming, Error> {
        let mut request = self.request(Method::GET, path, None)?;
        request.headers_mut().insert(
            header::ACCEPT,
            http::HeaderValue::from_static("text/event-stream"),
        );
        let open = async {
            let mut sender = self.open().await?;
            sender
                .send_request(request)
                .await
                .map_err(|e| Error::Unreachable(format!("{}: {e}", self.describe())))
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, open)
            .await
            .map_err(|_| Error::Timeout(format!("no answer from {}", self.describe())))??;
        Ok(Streaming {
            status: response.status(),
            body: response.into_body(),
        })
    }
}

async fn handshake<S>(stream: S) -> Result<http1::SendRequest<Full<Bytes>>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Error::Unreachable(format!("HTTP: {e}")))?;
    // Drives the socket; ends when the sender and the answer's body are dropped.
    tokio::spawn(connection);
    Ok(sender)
}

/// Turns an answer into JSON, or the server's `{"error": {"code", "message"}}` into an error.
pub fn decode(status: StatusCode, bytes: &[u8]) -> Result<Value, Error> {
    let value: Option<Value> = serde_json::from_slice(bytes).ok();
    if status.is_success() {
        return match value {
            Some(v) => Ok(v),
            None if bytes.is_empty() => Ok(Value::Null),
            None => Err(Error::BadAnswer(format!("HTTP {status}: not JSON"))),
        };
    }
    let error = value.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text.chars().take(200).collect()
        }
    });
    Err(Error::Api {
        status: status.as_u16(),
        code: field("code").unwrap_or_else(|| "http".to_owned()),
        message,
    })
}

/// Percent-encodes a query value or path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port),
            (false, "127.0.0.1", 8080)
        );
        let t = parse_url("https://front.example/mesh/").unwrap();
        assert_eq!((t.port, t.base_path.as_str()), (443, "/mesh"));
        let t = parse_url("http://[::1]:9/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 9, "[::1]:9")
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://x:notaport").is_err());
    }

    #[test]
    fn server_errors_keep_their_message() {
        let e = decode(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":{"code":"bad_args","message":"param `n`: expected an integer"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "param `n`: expected an integer (HTTP 422, bad_args)"
        );
        assert_eq!(e.exit_code(), 3);
        let e = decode(StatusCode::BAD_GATEWAY, b"<html>nginx</html>").unwrap_err();
        assert_eq!(e.exit_code(), 5);
    }

    #[test]
    fn encoding() {
        assert_eq!(enc("role=db a"), "role%3Ddb%20a");
    }
}
