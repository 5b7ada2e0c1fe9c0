//! `bench raw-server DIR`: the floor's server, a child process so its RSS is its own.
//!
//! Three listeners on loopback: `echo` (mTLS WebSocket, every message sent back), `agent`
//! (mTLS WebSocket for one echo agent at a time) and `http` (axum: `POST /cmd` relays the
//! body as a frame to the agent and answers with its reply — no store, no audit, no fsync).
//! Prints `ready echo=ADDR agent=ADDR http=ADDR`, then serves until stdin closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

use super::tls::{acceptor, server_ws_config};

/// Requests queued for the agent; a full queue makes handlers wait (backpressure).
const RELAY_QUEUE: usize = 1024;

type Job = (Value, oneshot::Sender<Value>);

/// Runs the server until stdin reaches EOF.
pub async fn main(dir: &Path) -> Result<()> {
    let tls = acceptor(dir)?;
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let agent = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "ready echo={} agent={} http={}",
        echo.local_addr()?,
        agent.local_addr()?,
        http.local_addr()?
    );
    let (tx, rx) = mpsc::channel::<Job>(RELAY_QUEUE);
    let app = axum::Router::new()
        .route("/cmd", axum::routing::post(command))
        .with_state(tx);
    let tasks = [
        tokio::spawn(serve_echo(echo, tls.clone())),
        tokio::spawn(serve_agent(agent, tls, rx)),
        tokio::spawn(async move {
            let _ = axum::serve(http, app).await;
        }),
    ];
    // The parent closes our stdin (or dies): that is the shutdown.
    let mut stdin = crate::procs::stdin_lines();
    while stdin.recv().await.is_some() {}
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn command(
    State(tx): State<mpsc::Sender<Job>>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, StatusCode> {
    let (reply, answer) = oneshot::channel();
    tx.send((body, reply))
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    answer.await.map(Json).map_err(|_| StatusCode::BAD_GATEWAY)
}

async fn serve_echo(listener: TcpListener, tls: TlsAcceptor) {
    while let Ok((tcp, _)) = listener.accept().await {
        let tls = tls.clone();
        tokio::spawn(async move {
            let Ok(mut ws) = upgrade(tcp, &tls).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn upgrade(
    tcp: TcpStream,
    tls: &TlsAcceptor,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>> {
    tcp.set_nodelay(true)?;
    let stream = tls.accept(tcp).await?;
    Ok(tokio_tungstenite::accept_async_with_config(stream, Some(server_ws_config())).await?)
}

/// One agent session at a time; requests wait in the queue while none is connected.
async fn serve_agent(listener: TcpListener, tls: TlsAcceptor, mut rx: mpsc::Receiver<Job>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let Ok(ws) = upgrade(tcp, &tls).await else {
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        // In flight: at most one per HTTP request being served (each waits for its answer).
        let mut pending: HashMap<u64, oneshot::Sender<Value>> = HashMap::new();
        let mut next_id = 0u64;
        loop {
            tokio::select! {
                job = rx.recv() => {
                    let Some((body, reply)) = job else { return };
                    next_id += 1;
                    pending.insert(next_id, reply);
                    let frame = json!({"type": "command", "id": next_id, "verb": body["verb"]});
                    if sink.send(Message::text(frame.to_string())).await.is_err() {
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(Ok(Message::Text(text))) = msg else {
                        if matches!(msg, None | Some(Err(_))) { break }
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    if let Some(reply) = v["id"].as_u64().and_then(|id| pending.remove(&id)) {
                        let _ = reply.send(v);
                    }
                }
            }
        }
    }
}

/// The echo agent (runs in the benchmark process): answers every command frame with a result.
pub async fn echo_agent(mut ws: super::tls::ClientWs) -> Result<()> {
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let v: Value = serde_json::from_str(text.as_str()).context("frame")?;
        let result = json!({"type": "result", "id": v["id"], "status": "ok"});
        ws.send(Message::text(result.to_string())).await?;
    }
    Ok(())
}

/// Parses the `ready` line: (echo, agent, http).
pub fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let field = |k: &str| -> Option<SocketAddr> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))?
            .parse()
            .ok()
    };
    Some((field("echo=")?, field("agent=")?, field("http=")?))
}
