//! The one HTTP exchange of enrolment, by hyper's HTTP/1.1 client: framing (Content-Length,
//! chunked) is hyper's, and the answer is read with a size limit.

use ::http::{header, Request};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Target;

/// Largest enrolment answer read; a certificate, a CA and a few pins are a few KiB.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// `POST`s `body` over `stream` with hyper's HTTP/1.1 client; returns status and body text.
pub(super) async fn post<S>(
    stream: S,
    target: &Target,
    path: &str,
    body: String,
) -> Result<(u16, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection future drives the socket; it ends when the exchange is over or fails.
    let driver = tokio::spawn(connection);
    let request = Request::post(path)
        .header(header::HOST, &target.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("HTTP request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::parse_api;
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    /// Serves one canned HTTP answer on a loopback port and returns the request it got.
    async fn one_shot(answer: Vec<u8>) -> (Target, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the JSON body is complete (the client sends Content-Length).
            while !request.ends_with(b"}") {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            sock.write_all(&answer).await.unwrap();
            sock.shutdown().await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (
            parse_api(&format!("http://127.0.0.1:{port}")).unwrap(),
            server,
        )
    }

    #[tokio::test]
    async fn a_chunk_boundary_inside_a_multibyte_character_is_fine() {
        // "é" is two bytes (c3 a9); the chunks end between them.
        let pieces: [&[u8]; 3] = [b"{\"error\":{\"message\":\"\xc3", b"\xa9t\xc3", b"\xa9\"}}"];
        let mut answer = b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\
            Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
        for piece in pieces {
            answer.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            answer.extend_from_slice(piece);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        let (target, server) = one_shot(answer).await;
        let tcp = TcpStream::connect(("127.0.0.1", target.port))
            .await
            .unwrap();
        let (status, text) = post(tcp, &target, "/api/v1/enroll", "{}".into())
            .await
            .unwrap();
        assert_eq!(status, 403);
        assert_eq!(text, "{\"error\":{\"message\":\"\u{e9}t\u{e9}\"}}");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /api/v1/enroll HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request
            .to_ascii_lowercase()
            .contains(&format!("host: 127.0.0.1:{}", target.port)));
    }

    #[tokio::test]
    async fn content_length_is_honoured() {
        // Bytes after the declared length are not part of the answer.
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}garbage".to_vec();
        let (target, _server) = one_shot(answer).await;
        let tcp = TcpStream::connect(("127.0.0.1", target.port))
            .await
            .unwrap();
        let (status, text) = post(tcp, &target, "/x", "{}".into()).await.unwrap();
        assert_eq!((status, text.as_str()), (200, "{}"));
    }
}
