//! A tiny HTTP/1.1 client (one request per connection) for API tests.
//!
//! Every connect and every exchange has a deadline that names the method and path, so a hung
//! endpoint fails its test with a message instead of hanging the suite.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Raw header block.
    pub headers: String,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// A header's value, case-insensitively.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Longest a TCP connect may take before the test fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one request/response may take (longer than any `wait: true` a test asks for).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to `addr`, panicking with `what` after [`CONNECT_TIMEOUT`].
pub async fn connect(addr: SocketAddr, what: &str) -> TcpStream {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("{what}: connect to {addr}: {e}"),
        Err(_) => panic!("{what}: connect to {addr} timed out after {CONNECT_TIMEOUT:?}"),
    }
}

/// Connects to `addr` from the local address `source` (e.g. one of 127.0.0.0/8, so each
/// client has an address of its own), panicking with `what` after [`CONNECT_TIMEOUT`].
pub async fn connect_from(source: std::net::IpAddr, addr: SocketAddr, what: &str) -> TcpStream {
    let connect = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(addr).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("{what}: connect to {addr} from {source}: {e}"),
        Err(_) => panic!("{what}: connect to {addr} timed out after {CONNECT_TIMEOUT:?}"),
    }
}

/// Sends one request and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    let stream = connect(addr, &format!("{method} {path}")).await;
    exchange(stream, addr, method, path, token, body).await
}

/// Like [`request`], but a refused (or timed-out) connect is `None` instead of a panic.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<Response> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    Some(exchange(stream, addr, method, path, token, body).await)
}

/// One request/response over any stream.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    exchange_raw(stream, &format!("{method} {path}"), req.as_bytes()).await
}

/// Sends `raw` (a whole request, headers and body, as the test wrote it) and parses the
/// response; `what` names the request in the timeout message.
pub async fn exchange_raw<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    what: &str,
    raw: &[u8],
) -> Response {
    let io = async {
        // A server may answer (e.g. 413) and close before the whole body is written; the
        // answer is still what the test wants, so a failed write is not fatal by itself.
        let wrote = stream.write_all(raw).await;
        let mut out = Vec::new();
        // A TLS peer may close without close_notify; what was read so far is the response.
        let _ = stream.read_to_end(&mut out).await;
        (wrote, out)
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, io).await {
        // Nothing came back: status 0, with the write error as the body for the message.
        Ok((Err(e), out)) if out.is_empty() => Response {
            status: 0,
            headers: String::new(),
            body: format!("{what}: sending the request failed: {e}"),
        },
        Ok((_, out)) => parse(&out),
        Err(_) => panic!("{what}: no complete response within {EXCHANGE_TIMEOUT:?}"),
    }
}

/// Sends a hand-written request (e.g. without `Content-Type`) over a new connection.
pub async fn request_raw(addr: SocketAddr, what: &str, raw: &[u8]) -> Response {
    let stream = connect(addr, what).await;
    exchange_raw(stream, what, raw).await
}

fn parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers: head.to_owned(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET` with an optional bearer token.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    request(addr, "GET", path, token, None).await
}

/// `GET` that reports a refused connection as `None` instead of panicking.
pub async fn try_get(addr: SocketAddr, path: &str) -> Option<Response> {
    try_request(addr, "GET", path, None, None).await
}

/// `GET` over TLS (for the nginx front door), trusting `ca_pem`.
pub async fn get_tls(addr: SocketAddr, ca_pem: &str, path: &str, token: Option<&str>) -> Response {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, crate::raw::tls(addr, ca_pem, None))
        .await
        .unwrap_or_else(|_| panic!("GET {path}: TLS connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("GET {path}: TLS connect to {addr}: {e}"));
    exchange(stream, addr, "GET", path, token, None).await
}
