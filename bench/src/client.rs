//! A keep-alive HTTP/1.1 client (hyper): one connection, requests one after another.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One keep-alive connection to an HTTP server.
pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
    sender: SendRequest<Full<Bytes>>,
    conn: JoinHandle<()>,
}

impl Client {
    /// Connects to `addr`; requests carry `Authorization: Bearer token` when given.
    pub async fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Client> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        // The connection task ends when the sender is dropped or the server closes.
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client {
            addr,
            token: token.map(str::to_owned),
            sender,
            conn,
        })
    }

    /// Sends one request; returns the status and the body parsed as JSON (Null if it is not).
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value)> {
        self.sender.ready().await.context("connection closed")?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))?;
        let res = self.sender.send_request(req).await?;
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn.abort();
    }
}
