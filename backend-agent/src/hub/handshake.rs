//! One hub connection from TCP to `hello`: TLS, upgrade, identity, hello checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::{
    close, decode_agent_frame, AgentFrame, HelloFrame, HUB_PATH, PROTOCOL_VERSION,
};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{http, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use super::identity::{self, PeerIdentity, Rejection, FORWARDED_CERT_HEADER};
use super::{session, HubContext, TaskGuard};
use crate::audit::events;
use crate::registry::IdentityRejection;

/// The WebSocket over TLS over TCP that a session runs on.
pub type HubSocket = WebSocketStream<TlsStream<TcpStream>>;

/// Runs one connection to its end. Never panics on peer input; every refusal is logged once.
pub(super) async fn connection(
    ctx: Arc<HubContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake_permit: OwnedSemaphorePermit,
    _task: TaskGuard,
) {
    let limit = Duration::from_secs(ctx.config.handshake_timeout_secs);
    let overloaded = match admit(&ctx).await {
        Admission::Now => None,
        Admission::RetryAfter(secs) => Some(secs),
    };
    let (mut ws, identity, forwarded_client) =
        match tokio::time::timeout(limit, tls_and_upgrade(&ctx, tcp, overloaded)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(rejection)) => return refused(&ctx, peer, &rejection, None),
            Err(_) => {
                let r = Rejection::new(
                    "handshake_timeout",
                    format!("no TLS handshake and upgrade within {}s", limit.as_secs()),
                );
                return refused(&ctx, peer, &r, None);
            }
        };
    tracing::Span::current().record("agent.id", identity.cn.as_str());
    // From here on the real client (behind a pinned proxy: the forwarded address) is used.
    let (peer, limited) = super::accept::after_tls(&ctx, peer, forwarded_client, &identity);
    tracing::Span::current().record("client.addr", tracing::field::display(peer.ip()));
    if let Err(r) = limited {
        refused(&ctx, peer, &r, Some(&identity));
        let code = super::accept::TRY_AGAIN_LATER;
        return session::close_ws(&mut ws, code, &r.detail).await;
    }

    let mut checked = ctx.registry.check_identity(&identity.cn, &identity.pin);
    // Another replica may have enrolled this pin and its announcement been lost: look it up
    // in the shared store once (bounded inside; only CA-verified certificates get here).
    if checked == Err(IdentityRejection::PinNotEnrolled)
        && ctx.events.refresh_identity(&identity.cn).await
    {
        checked = ctx.registry.check_identity(&identity.cn, &identity.pin);
    }
    if let Err(why) = checked {
        let r = Rejection::new(
            why.code(),
            format!(
                "pin {} is {} for agent {}",
                identity.pin,
                why.code().replace('_', " "),
                identity.cn
            ),
        );
        refused(&ctx, peer, &r, Some(&identity));
        let (code, reason) = close_for(why);
        return session::close_ws(&mut ws, code, reason).await;
    }

    let hello_limit = Duration::from_secs(ctx.config.hello_timeout_secs);
    let hello = match tokio::time::timeout(hello_limit, wait_hello(&mut ws, &ctx)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err((code, rejection))) => {
            refused(&ctx, peer, &rejection, Some(&identity));
            return session::close_ws(&mut ws, code, &rejection.detail).await;
        }
        Err(_) => {
            let r = Rejection::new(
                "hello_timeout",
                format!("no hello within {}s", hello_limit.as_secs()),
            );
            refused(&ctx, peer, &r, Some(&identity));
            return session::close_ws(&mut ws, close::PROTOCOL_ERROR, "no hello in time").await;
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        let r =
            Rejection::new(
                "protocol_version",
                format!(
                "agent speaks protocol {} but this hub speaks {PROTOCOL_VERSION}: upgrade the {}",
                hello.protocol,
                if hello.protocol < PROTOCOL_VERSION { "agent" } else { "backend" }
            ),
            );
        refused(&ctx, peer, &r, Some(&identity));
        return session::close_ws(&mut ws, close::PROTOCOL_ERROR, &r.detail).await;
    }
    if let Some(nonce) = hello.nonce.as_deref() {
        if !agentmesh_protocol::proof::is_valid_nonce(nonce) {
            let r = Rejection::new(
                "bad_nonce",
                "hello.nonce must be standard base64 of 32 random bytes",
            );
            refused(&ctx, peer, &r, Some(&identity));
            return session::close_ws(&mut ws, close::PROTOCOL_ERROR, &r.detail).await;
        }
    }
    if hello.agent_id != identity.cn {
        let r = Rejection::new(
            "id_mismatch",
            format!(
                "hello agent_id {:?} does not match certificate CN {:?}",
                hello.agent_id, identity.cn
            ),
        );
        refused(&ctx, peer, &r, Some(&identity));
        return session::close_ws(&mut ws, close::UNAUTHORISED, &r.detail).await;
    }
    drop(handshake_permit);
    session::run(ctx, ws, identity, hello, peer).await;
}

/// The close code and reason for an identity refused at the handshake or at attach.
pub(super) fn close_for(why: IdentityRejection) -> (u16, &'static str) {
    match why {
        IdentityRejection::Revoked => (close::REVOKED, "certificate revoked"),
        IdentityRejection::Retired => (
            close::UNAUTHORISED,
            "pin retired: this certificate was renewed",
        ),
        IdentityRejection::PinNotEnrolled => (close::UNAUTHORISED, "pin not enrolled for this id"),
    }
}

/// Counts, logs and audits (aggregated per source) a refused connection.
pub(super) fn refused(
    ctx: &HubContext,
    peer: SocketAddr,
    r: &Rejection,
    identity: Option<&PeerIdentity>,
) {
    ctx.metrics.hub_rejected(r.reason);
    // Aggregated per source: a reconnect loop or a scan costs a few records per window.
    let source = crate::audit_flood::source_name(Some(peer.ip()));
    let first = ctx
        .failures
        .failure(&source, &format!("hub: {}", r.reason), || {
            events::agent_rejected(peer, r, identity)
        });
    // Logged at the rate it is audited: the first refusal of a source per window.
    if !first {
        debug!(reason = r.reason, detail = %r.detail, "hub connection refused");
        return;
    }
    match identity {
        Some(id) => {
            warn!(reason = r.reason, cert.cn = %id.cn, cert.pin = %id.pin, detail = %r.detail, "hub connection refused")
        }
        None => warn!(reason = r.reason, detail = %r.detail, "hub connection refused"),
    }
}

enum Admission {
    Now,
    RetryAfter(u64),
}

/// Longest a handshake waits for the global admission rate before being told to come back.
const MAX_ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// Paces handshakes to `[limits].hub_handshakes_per_sec`: short waits are absorbed here (in
/// this connection's task, never in the accept loop); longer ones get a retry hint.
async fn admit(ctx: &HubContext) -> Admission {
    let mut waited = Duration::ZERO;
    loop {
        let wait = ctx.limits.load().hub_admission();
        if wait.is_zero() {
            ctx.metrics
                .hub_admitted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Admission::Now;
        }
        if waited + wait > MAX_ADMISSION_WAIT {
            ctx.metrics.rate_limited("hub_admission");
            return Admission::RetryAfter(crate::limits::retry_after_secs(wait).max(1));
        }
        tokio::time::sleep(wait).await;
        waited += wait;
    }
}

async fn tls_and_upgrade(
    ctx: &HubContext,
    tcp: TcpStream,
    overloaded: Option<u64>,
) -> Result<(HubSocket, PeerIdentity, Option<std::net::IpAddr>), Rejection> {
    let tls = ctx
        .acceptor
        .accept(tcp)
        .await
        .map_err(|e| Rejection::new(super::tls::classify_handshake_error(&e), e.to_string()))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| Rejection::new("no_cert", "no client certificate"))?;

    let mut forwarded: Option<String> = None;
    let mut forwarded_client = None;
    let mut bad_path: Option<String> = None;
    #[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != HUB_PATH {
            bad_path = Some(req.uri().path().chars().take(128).collect());
            let mut err =
                ErrorResponse::new(Some(format!("not found; agents connect to {HUB_PATH}\n")));
            *err.status_mut() = http::StatusCode::NOT_FOUND;
            return Err(err);
        }
        if let Some(secs) = overloaded {
            let mut err = ErrorResponse::new(Some(
                "hub busy: too many agents connecting; retry later\n".to_owned(),
            ));
            *err.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            if let Ok(v) = http::HeaderValue::from_str(&secs.to_string()) {
                err.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            return Err(err);
        }
        forwarded = req
            .headers()
            .get(FORWARDED_CERT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        forwarded_client = crate::client_addr::forwarded(req.headers());
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(tls, callback, Some(ctx.ws_config()))
        .await
        .map_err(|e| match (bad_path.take(), overloaded) {
            (Some(path), _) => {
                Rejection::new("wrong_path", format!("upgrade requested for {path:?}"))
            }
            (None, Some(secs)) => Rejection::new(
                "admission_paced",
                format!("hub busy; told to retry after {secs}s"),
            ),
            (None, None) => Rejection::new("websocket_upgrade", e.to_string()),
        })?;
    let identity = identity::resolve(
        &leaf,
        forwarded.as_deref(),
        &ctx.live.trusted_proxy_pins.load(),
        &ctx.client_verifier,
    )?;
    if let Some(proxy) = &identity.via_proxy {
        info!(proxy.pin = %proxy, "certificate forwarded by trusted proxy");
        if let Some(header) = forwarded.as_deref() {
            let pem = identity::percent_decode(header);
            ctx.metrics.agent_certificate_pem(&identity.cn, &pem);
        }
    } else {
        ctx.metrics.agent_certificate(&identity.cn, &leaf);
    }
    Ok((ws, identity, forwarded_client))
}

async fn wait_hello(ws: &mut HubSocket, ctx: &HubContext) -> Result<HelloFrame, (u16, Rejection)> {
    let protocol = |detail: String| {
        (
            close::PROTOCOL_ERROR,
            Rejection::new("protocol_error", detail),
        )
    };
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(text)) => {
                return match decode_agent_frame(text.as_bytes(), ctx.config.max_message_bytes) {
                    Ok(AgentFrame::Hello(hello)) => {
                        for (verb, e) in hello.unusable_verbs() {
                            warn!(agent.id = %hello.agent_id, verb, error = %e, "verb unusable: its parameter patterns exceed the hub's limits; commands for it answer 422");
                        }
                        Ok(hello)
                    }
                    Ok(other) => Err(protocol(format!("expected hello, got {}", other.kind()))),
                    Err(e) => Err(protocol(format!("bad hello: {e}"))),
                }
            }
            Ok(Message::Binary(_)) => {
                return Err(protocol(
                    "binary messages are not part of the protocol".into(),
                ))
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(WsError::Capacity(e)) => {
                return Err((
                    close::MESSAGE_TOO_BIG,
                    Rejection::new("message_too_big", e.to_string()),
                ))
            }
            Err(e) => return Err(protocol(format!("read failed: {e}"))),
        }
    }
    Err(protocol("closed before hello".into()))
}
