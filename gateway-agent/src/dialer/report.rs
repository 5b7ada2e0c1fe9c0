//! What each way a connection fails or a session ends means: the log line, the audit record,
//! the observable state and the delay before the next attempt.

use std::time::Duration;

use agentmesh_protocol::close::{GOING_AWAY, REVOKED, SUPERSEDED, UNAUTHORISED};
use tracing::{error, info, warn};

use super::Dialer;
use crate::backoff::Backoff;
use crate::connect::ConnectError;
use crate::session::{self, HandshakeError, ProofError, SessionEnd, NORMAL_CLOSURE};

impl Dialer {
    pub(super) fn after_connect_error(&mut self, e: ConnectError) -> Duration {
        match &e {
            ConnectError::PinMismatch(m) => {
                self.state.record_pin_mismatch(&m.presented);
                self.audit.hub_pin_mismatch(&m.presented, &m.expected);
                error!(
                    presented_pin = %m.presented,
                    expected_pins = %m.expected.join(", "),
                    "refusing the hub: the pin it presented is not in outbound.server_pins \
                     (wrong hub certificate, or someone in the middle); fix server_pins or the \
                     hub certificate"
                );
            }
            _ => warn!(error = %e, "cannot reach the hub"),
        }
        self.state.set_disconnected(Some(e.to_string()));
        let delay = self.backoff.next_delay(&mut self.rng);
        match e {
            ConnectError::Http {
                retry_after: Some(hint),
                ..
            } => delay.max(self.backoff.cap(hint)),
            _ => delay,
        }
    }

    pub(super) fn after_handshake_error(&mut self, e: HandshakeError) -> Duration {
        if let HandshakeError::Proof(p) = &e {
            self.after_proof_error(p);
        }
        let code = match &e {
            HandshakeError::Closed { code, reason } => {
                if matches!(*code, Some(REVOKED | UNAUTHORISED)) {
                    self.audit.refused(code.unwrap_or_default(), reason);
                }
                *code
            }
            _ => None,
        };
        match code {
            Some(REVOKED) => error!(error = %e, "the hub revoked this agent; retrying slowly"),
            Some(UNAUTHORISED) => error!(
                error = %e,
                "the hub refused this agent; is its pin enrolled and its certificate CN the agent id?"
            ),
            _ if matches!(e, HandshakeError::Protocol(_)) => {
                error!(error = %e, "protocol mismatch")
            }
            _ if matches!(e, HandshakeError::Proof(_)) => {}
            _ => warn!(error = %e, "session handshake failed"),
        }
        self.state.set_disconnected(Some(e.to_string()));
        self.delay_after_close(code)
    }

    /// A hub that did not prove it holds a pinned key: as loud as a TLS pin mismatch.
    fn after_proof_error(&mut self, e: &ProofError) {
        match e {
            ProofError::KeyNotPinned {
                presented,
                expected,
            } => {
                self.state.record_pin_mismatch(presented);
                self.audit.hub_pin_mismatch(presented, expected);
                error!(
                    presented_pin = %presented,
                    expected_pins = %expected.join(", "),
                    "refusing the hub: it signed welcome with a key whose pin is not in \
                     outbound.server_pins (server_pins must hold the hub's pin, not a front \
                     door's); fix server_pins or the hub certificate"
                );
            }
            _ => error!(
                error = %e,
                "refusing the hub: it did not prove it holds a key in outbound.server_pins \
                 (a front door in the middle without the hub behind it, or a hub too old to \
                 sign welcome behind a proxy)"
            ),
        }
    }

    pub(super) fn after_session(&mut self, session_id: &str, end: SessionEnd) -> Option<Duration> {
        let (code, reason) = close_of(&end);
        self.audit.disconnected(session_id, code, &reason);
        let delay = match &end {
            SessionEnd::Shutdown => return None,
            SessionEnd::Drain(after) => {
                info!(
                    reconnect_after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                    "hub is draining"
                );
                self.backoff.reset();
                self.backoff.after_hint(*after, &mut self.rng)
            }
            SessionEnd::Closed { code, reason } => {
                let what = session::describe(*code);
                match *code {
                    Some(GOING_AWAY) => info!(code = %what, %reason, "hub closed the session"),
                    Some(SUPERSEDED) => warn!(
                        code = %what,
                        %reason,
                        "another connection with this agent's identity replaced this one"
                    ),
                    Some(c @ (REVOKED | UNAUTHORISED)) => {
                        self.audit.refused(c, reason);
                        error!(code = %what, %reason, "hub closed the session")
                    }
                    _ => warn!(code = %what, %reason, "hub closed the session"),
                }
                self.delay_after_close(*code)
            }
            SessionEnd::Lost(reason) => {
                warn!(%reason, "lost the hub connection");
                self.backoff.next_delay(&mut self.rng)
            }
            SessionEnd::Renewed { pin } => {
                info!(%pin, "reconnecting with the renewed certificate");
                self.state.record_renewal();
                self.backoff.reset();
                self.state.set_disconnected(None);
                return Some(Duration::ZERO);
            }
        };
        let message = match end {
            SessionEnd::Closed { code, reason } => {
                format!(
                    "hub closed the session ({}): {reason}",
                    session::describe(code)
                )
            }
            SessionEnd::Lost(reason) => reason,
            SessionEnd::Drain(_) | SessionEnd::Shutdown => "hub is draining".to_owned(),
            SessionEnd::Renewed { .. } => "certificate renewed".to_owned(),
        };
        self.state.set_disconnected(Some(message));
        Some(delay)
    }

    fn delay_after_close(&mut self, code: Option<u16>) -> Duration {
        delay_after_close(&mut self.backoff, &mut self.rng, code)
    }
}

/// The close code and reason an ended session is audited with.
fn close_of(end: &SessionEnd) -> (Option<u16>, String) {
    match end {
        SessionEnd::Shutdown => (Some(GOING_AWAY), "agent shutting down".to_owned()),
        SessionEnd::Drain(_) => (Some(GOING_AWAY), "hub is draining".to_owned()),
        SessionEnd::Closed { code, reason } => (*code, reason.clone()),
        SessionEnd::Lost(reason) => (None, reason.clone()),
        SessionEnd::Renewed { .. } => (Some(NORMAL_CLOSURE), "certificate renewed".to_owned()),
    }
}

/// A revoked agent keeps trying (revocation can be undone) but only at the max backoff.
fn delay_after_close(
    backoff: &mut Backoff,
    rng: &mut impl rand::Rng,
    code: Option<u16>,
) -> Duration {
    let delay = backoff.next_delay(rng);
    if code == Some(REVOKED) {
        backoff.max()
    } else {
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng as _;

    #[test]
    fn revoked_waits_the_max_backoff_others_back_off_normally() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let revoked = delay_after_close(&mut backoff, &mut rng, Some(REVOKED));
        assert_eq!(revoked, Duration::from_secs(30));
        backoff.reset();
        let superseded = delay_after_close(&mut backoff, &mut rng, Some(SUPERSEDED));
        assert_eq!(superseded, Duration::from_millis(500));
    }
}
