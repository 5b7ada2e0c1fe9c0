//! The accept loop: never waits on a peer, bounds handshakes in flight.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn, Instrument};

use super::{handshake, HubContext};

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
            _ = super::stopped(&mut shutdown) => break,
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
        if ctx.limits.check_hub_ip(peer.ip()).is_err() {
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
        let span =
            tracing::info_span!("hub_conn", peer.addr = %peer, agent.id = tracing::field::Empty);
        let guard = ctx.tasks.enter();
        tokio::spawn(handshake::connection(ctx.clone(), tcp, peer, permit, guard).instrument(span));
    }
    info!("hub stopped accepting");
}
