//! A Server-Sent Events client for `GET /api/v1/events`: a raw HTTP/1.1 request, then the
//! chunked body decoded and split into events as it arrives. Every read has a deadline.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any byte stream the client can speak HTTP over (plain TCP, or TLS to a front door).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One event as received.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `id:`.
    pub id: Option<u64>,
    /// `event:`.
    pub kind: String,
    /// `data:` as JSON.
    pub data: Value,
}

/// An open event stream.
pub struct SseStream {
    /// Response status.
    pub status: u16,
    /// Raw response headers.
    pub headers: String,
    stream: Box<dyn Io>,
    raw: Vec<u8>,
    body: Vec<u8>,
    events: VecDeque<SseEvent>,
    /// Comment lines seen (without the leading `:`).
    pub comments: Vec<String>,
    ended: bool,
    chunked: bool,
}

/// Options for [`SseStream::open_with`].
#[derive(Debug, Default, Clone)]
pub struct SseOptions {
    /// `Last-Event-ID` header.
    pub last_event_id: Option<u64>,
    /// A small receive buffer and a small MSS: on loopback the kernel would otherwise buffer
    /// megabytes for a reader that stopped reading (the sender's buffer is sized from the
    /// 64 KiB loopback MSS), and a stalled reader would take thousands of events to show.
    pub tiny_window: bool,
}

impl SseStream {
    /// Opens `path` (e.g. `/api/v1/events?types=agent`) with `token`.
    pub async fn open(addr: SocketAddr, path: &str, token: Option<&str>) -> SseStream {
        Self::open_with(addr, path, token, SseOptions::default()).await
    }

    /// Opens with options; returns once the response headers are in.
    pub async fn open_with(
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
        options: SseOptions,
    ) -> SseStream {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        if options.tiny_window {
            socket.set_recv_buffer_size(2048).unwrap();
            socket.set_tcp_mss(536).unwrap();
        }
        // A blocking connect on loopback returns at once (the listener's backlog accepts it).
        socket
            .set_write_timeout(Some(crate::http::CONNECT_TIMEOUT))
            .unwrap();
        socket
            .connect_timeout(&addr.into(), crate::http::CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {path}: connect: {e}"));
        socket.set_nonblocking(true).unwrap();
        let std_stream: std::net::TcpStream = socket.into();
        let stream = TcpStream::from_std(std_stream).unwrap();
        Self::start(Box::new(stream), addr, path, token, options.last_event_id).await
    }

    /// Opens `path` over TLS (e.g. through the nginx front door), trusting `ca_pem`.
    pub async fn open_tls(
        addr: SocketAddr,
        ca_pem: &str,
        path: &str,
        token: Option<&str>,
    ) -> SseStream {
        let stream = tokio::time::timeout(
            crate::http::CONNECT_TIMEOUT,
            crate::raw::tls(addr, ca_pem, None),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path}: TLS connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("GET {path}: TLS connect to {addr}: {e}"));
        Self::start(Box::new(stream), addr, path, token, None).await
    }

    async fn start(
        mut stream: Box<dyn Io>,
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
        last_event_id: Option<u64>,
    ) -> SseStream {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut s = SseStream {
            status: 0,
            headers: String::new(),
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            events: VecDeque::new(),
            comments: Vec::new(),
            ended: false,
            chunked: false,
        };
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        let end = loop {
            if let Some(i) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(s.fill(deadline).await, "GET {path}: no response headers");
        };
        s.headers = String::from_utf8_lossy(&s.raw[..end]).into_owned();
        s.status = s
            .headers
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        s.raw.drain(..end + 4);
        s.chunked = s
            .headers
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        s
    }

    /// The body so far (for error answers).
    pub fn body_text(&mut self) -> String {
        self.decode();
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Reads more bytes; false on EOF or deadline.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut buf = [0u8; 8192];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            _ => false,
        }
    }

    fn decode(&mut self) {
        if !self.chunked {
            // A plain body (an error answer, or a stream delimited by the connection's end).
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).unwrap_or(0);
            if size == 0 {
                self.ended = true;
                return;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.raw.drain(..line_end + 2 + size + 2);
            self.body.extend_from_slice(&data);
        }
    }

    fn split_events(&mut self) {
        while let Some(i) = self.body.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8_lossy(&self.body[..i]).into_owned();
            self.body.drain(..i + 2);
            let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                if let Some(c) = line.strip_prefix(':') {
                    self.comments.push(c.trim().to_owned());
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = value.parse().ok(),
                    "event" => kind = value.to_owned(),
                    "data" => data.push_str(value),
                    _ => {}
                }
            }
            if !data.is_empty() {
                let data = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
                self.events.push_back(SseEvent { id, kind, data });
            }
        }
    }

    /// The next event within `limit`; `None` when the stream ended or the time ran out.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.decode();
            self.split_events();
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.ended || !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// Events until `pred` holds for one (returned last); panics after [`crate::PATIENCE`].
    pub async fn until(&mut self, what: &str, pred: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(e) = self.next(left).await else {
                panic!(
                    "event stream: no {what} (ended: {}); saw {seen:?}",
                    self.ended
                );
            };
            let done = pred(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }

    /// Reads everything until the server ends the stream; true if it did within `limit`.
    pub async fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.decode();
            if self.ended {
                return true;
            }
            if !self.fill(deadline).await {
                // EOF without the last chunk also ends the stream; a deadline does not.
                return tokio::time::Instant::now() < deadline;
            }
        }
    }
}
