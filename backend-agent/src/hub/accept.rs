//! The accept loop: never waits on a peer, bounds handshakes in flight; and the
//! per-address and per-identity connect limits that need the TLS identity to decide.
//!
//! Before TLS only the TCP peer is known: it is charged to the per-address limit unless it
//! is in `[hub] trusted_proxies`. Such a peer is charged after TLS instead ([`after_tls`]),
//! unless it presented a pinned proxy certificate; then the client address the proxy
//! forwarded (`X-Real-IP`, else the last `X-Forwarded-For` hop) is charged. Every
//! connection is finally charged to its agent identity (certificate CN), so behind a proxy
//! one noisy agent is throttled alone.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn, Instrument};

use super::identity::{PeerIdentity, Rejection};
use super::{handshake, HubContext};
use crate::client_addr::is_trusted;

/// WebSocket close code "Try Again Later" (RFC 6455 registry): sent to a connection over
/// the per-address or per-identity connect limit after the upgrade.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Accepts hub connections until shutdown; each connection runs in its own task.
pub async fn serve(listener: TcpListener, ctx: Arc<HubContext>) {
    let pending = Arc::new(Semaphore::new(ctx.config.max_pending_handshakes));
    let mut shutdown = ctx.shutdown.clone();
    let mut accept_backoff = Duration::from_millis(5);
    let ip_drops = std::sync::atomic::AtomicU64::new(0);
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "hub listening");
    }
    loop {
        let accepted = tokio::select! {
            _ = agentmesh_daemon::stopped(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                accept_backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, then try again.
                warn!(error = %e, backoff_ms = accept_backoff.as_millis() as u64, "hub accept failed");
                tokio::time::sleep(accept_backoff).await;
                accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        ctx.metrics
            .hub_connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        // Counted before TLS, so a flood from one address costs one accept and one lookup.
        // A configured proxy address is counted after TLS instead (see `after_tls`).
        let deferred = is_trusted(&ctx.live.trusted_proxies.load(), peer.ip());
        if !deferred && ctx.limits.load().check_hub_ip(peer.ip()).is_err() {
            ctx.metrics.hub_rejected("ip_rate_limited");
            ctx.metrics.rate_limited("hub_ip");
            let n = ip_drops.fetch_add(1, Ordering::Relaxed) + 1;
            // One log line per power of two, so a flood does not become a log flood.
            if n.is_power_of_two() {
                warn!(peer.addr = %peer, reason = "ip_rate_limited", dropped_total = n, "hub connection refused before TLS");
                ctx.audit
                    .record(crate::audit::events::hub_connects_rate_limited(
                        peer.ip(),
                        n,
                    ));
            }
            continue;
        }
        // At the bound, new connections are dropped at once rather than queued: a flood of
        // silent peers costs one accept each and cannot delay the ones already handshaking.
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            ctx.metrics.hub_rejected("handshake_capacity");
            warn!(peer.addr = %peer, reason = "handshake_capacity", "hub connection refused");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let span = tracing::info_span!(
            "hub_conn",
            peer.addr = %peer,
            client.addr = tracing::field::Empty,
            agent.id = tracing::field::Empty
        );
        let guard = ctx.tasks.enter();
        tokio::spawn(handshake::connection(ctx.clone(), tcp, peer, permit, guard).instrument(span));
    }
    info!("hub stopped accepting");
}

/// The connect limits that need the TLS identity. Returns the client address the session is
/// keyed, logged and audited under (the forwarded one behind a pinned proxy) and, if over a
/// limit, the refusal.
///
/// `forwarded` is the address the upgrade request's headers name; it is used only when the
/// certificate was forwarded by a pinned proxy.
pub(super) fn after_tls(
    ctx: &HubContext,
    peer: SocketAddr,
    forwarded: Option<IpAddr>,
    identity: &PeerIdentity,
) -> (SocketAddr, Result<(), Rejection>) {
    let (client, charge_address) = match &identity.via_proxy {
        Some(_) => (forwarded.unwrap_or(peer.ip()), true),
        // From a proxy address without a proxy certificate: the charge deferred before TLS.
        None => (
            peer.ip(),
            is_trusted(&ctx.live.trusted_proxies.load(), peer.ip()),
        ),
    };
    let client = SocketAddr::new(client, peer.port());
    (client, charge(ctx, client.ip(), charge_address, identity))
}

fn charge(
    ctx: &HubContext,
    client: IpAddr,
    address: bool,
    identity: &PeerIdentity,
) -> Result<(), Rejection> {
    if address {
        if let Err(wait) = ctx.limits.load().check_hub_ip(client) {
            ctx.metrics.rate_limited("hub_ip");
            return Err(Rejection::new(
                "ip_rate_limited",
                format!(
                    "client {client} over the per-address connect limit; retry in {}s",
                    crate::limits::retry_after_secs(wait)
                ),
            ));
        }
    }
    // Only enrolled identities spend a bucket: any other is refused right after this anyway,
    // and must not be able to mint limiter keys.
    let cn = identity.cn.as_str();
    if ctx.registry.check_identity(cn, &identity.pin).is_err() {
        return Ok(());
    }
    if let Err(wait) = ctx.limits.load().check_hub_identity(cn) {
        ctx.metrics.rate_limited("hub_identity");
        return Err(Rejection::new(
            "identity_rate_limited",
            format!(
                "agent {cn} over the per-identity connect limit; retry in {}s",
                crate::limits::retry_after_secs(wait)
            ),
        ));
    }
    Ok(())
}
