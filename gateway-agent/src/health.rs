//! The local health endpoint (`agent.health_listen`): `GET /health` answers 200 while the
//! process lives (`connected` says whether the hub session is up), `GET /ready` answers 200
//! only while connected, 503 otherwise, `GET /metrics` serves [`crate::metrics`]. The same
//! state feeds systemd's `STATUS=` line ([`status_line`], [`spawn_watchdog`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::{AgentState, StateSnapshot};

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
        .route("/metrics", get(metrics))
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
        .with_graceful_shutdown(async move { agentmesh_daemon::stopped(&mut stop).await })
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

async fn metrics(State(h): State<Health>) -> Response {
    let body = crate::metrics::global().render(&h.state.snapshot());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

/// The `STATUS=` line for `systemctl status`: connected to the hub, waiting to reconnect
/// (and why), or refusing the hub for its pin.
pub fn status_line(s: &StateSnapshot, hub: &str) -> String {
    if s.connected {
        let session = s.session_id.as_deref().unwrap_or("?");
        return format!("connected to {hub} (session {session})");
    }
    let wait = s.next_attempt.map(|at| {
        at.saturating_duration_since(std::time::Instant::now())
            .as_secs()
    });
    let mut line = match (wait, &s.last_presented_pin, &s.last_error) {
        (_, Some(pin), Some(e)) if e.contains("pin") => {
            format!("pin mismatch: {hub} presented {pin}, not in outbound.server_pins")
        }
        (Some(_), _, _) | (_, _, Some(_)) => format!("disconnected from {hub}"),
        (None, _, None) => format!("connecting to {hub}"),
    };
    if let Some(secs) = wait {
        line.push_str(&format!("; reconnecting in {secs} s"));
    }
    if let Some(e) = &s.last_error {
        line.push_str(&format!(
            " (last error: {})",
            e.chars().take(160).collect::<String>()
        ));
    }
    line
}

/// Starts systemd's watchdog/status task (when run under systemd): `STATUS=` follows
/// [`status_line`]; the keep-alive is sent while the runtime answers and the agent has not
/// stopped.
pub fn spawn_watchdog(
    state: Arc<AgentState>,
    hub: String,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    agentmesh_daemon::notify::spawn_watchdog(
        move || agentmesh_daemon::notify::Probe {
            healthy: true,
            status: status_line(&state.snapshot(), &hub),
        },
        Some(stop),
    )
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

    #[test]
    fn status_line_says_why_it_is_not_connected() {
        let hub = "wss://hub/ws/agent";
        let mut s = StateSnapshot::default();
        assert_eq!(status_line(&s, hub), "connecting to wss://hub/ws/agent");
        s.last_error = Some("pin mismatch: hub pin not in server_pins".into());
        s.last_presented_pin = Some("sha256//abc".into());
        s.next_attempt = Some(std::time::Instant::now() + std::time::Duration::from_secs(30));
        let line = status_line(&s, hub);
        assert!(
            line.starts_with("pin mismatch: wss://hub/ws/agent presented sha256//abc"),
            "{line}"
        );
        assert!(line.contains("reconnecting in 2"), "{line}");
        s.last_presented_pin = None;
        s.last_error = Some("connection refused".into());
        let line = status_line(&s, hub);
        assert!(
            line.starts_with("disconnected from wss://hub/ws/agent; reconnecting in"),
            "{line}"
        );
        assert!(line.ends_with("(last error: connection refused)"), "{line}");
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
        assert!(status_line(&state.snapshot(), "wss://hub:8081/ws/agent")
            .starts_with("connected to wss://hub:8081/ws/agent (session s-1)"));

        stop_tx.send(true).unwrap();
        server.await.unwrap().unwrap();
    }
}
