//! The local health endpoint (`agent.health_listen`): `GET /health` answers 200 while the
//! process lives (`connected` says whether the hub session is up), `GET /ready` answers 200
//! only while connected, 503 otherwise.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::session::shutdown_signalled;
use crate::state::AgentState;

#[derive(Clone)]
struct Health {
    state: Arc<AgentState>,
    agent_id: Arc<str>,
}

/// The health routes over `state`.
pub fn router(state: Arc<AgentState>, agent_id: String) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(Health {
            state,
            agent_id: agent_id.into(),
        })
}

/// Serves `router` on `listener` until `stop` is set.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown_signalled(&mut stop).await })
        .await
}

async fn health(State(h): State<Health>) -> Json<serde_json::Value> {
    let s = h.state.snapshot();
    Json(json!({
        "status": "healthy",
        "connected": s.connected,
        "session_id": s.session_id,
        "agent_id": &*h.agent_id,
        "version": env!("CARGO_PKG_VERSION"),
        "connects": s.connects,
        "pin_mismatches": s.pin_mismatches,
        "last_error": s.last_error,
    }))
}

async fn ready(State(h): State<Health>) -> Response {
    let connected = h.state.is_connected();
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": connected, "agent_id": &*h.agent_id })),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        (status, serde_json::from_str(body).unwrap())
    }

    #[tokio::test]
    async fn health_always_ok_ready_follows_the_connection() {
        let state = AgentState::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            router(state.clone(), "edge-01".into()),
            stop_rx,
        ));

        let (status, body) = get(addr, "/health").await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["connected"], false);
        assert_eq!(body["agent_id"], "edge-01");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(get(addr, "/ready").await.0, 503);

        state.set_connected("s-1");
        let (status, body) = get(addr, "/health").await;
        assert_eq!(
            (status, &body["connected"]),
            (200, &serde_json::json!(true))
        );
        assert_eq!(body["session_id"], "s-1");
        assert_eq!(get(addr, "/ready").await.0, 200);

        stop_tx.send(true).unwrap();
        server.await.unwrap().unwrap();
    }
}
