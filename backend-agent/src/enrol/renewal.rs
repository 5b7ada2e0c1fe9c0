//! Certificate renewal over an authenticated session.
//!
//! At most one renewal per agent is outstanding, and one may start only every
//! `3600 / [limits] renewals_per_agent_per_hour` seconds; both rules are checked against the
//! store (so a restart resets neither), first cheaply before signing and again atomically
//! when the new pin is recorded. The old pin is retired once a session authenticates with
//! the new one; a renewal whose pin was never used is retired when the next one starts. So a
//! stolen key can hold at most one extra active pin, and mints at most one per interval.

use mesh_certs::Validity;
use tracing::{info, warn};

use super::{EnrolError, Enrolment, SignedIdentity};
use crate::audit::events;
use crate::clock;
use crate::store::{renewal_refusal, RenewalRecord, RenewalStart};

fn refused(start: RenewalStart) -> EnrolError {
    let (code, wait_ms) = match start {
        RenewalStart::Outstanding { wait_ms } => ("renewal_outstanding", wait_ms),
        RenewalStart::TooSoon { wait_ms } => ("renewal_rate_limited", wait_ms),
        RenewalStart::Started { .. } => ("renewal_refused", 0),
    };
    let secs = (wait_ms.max(0) + 999) / 1000;
    let message = match code {
        "renewal_outstanding" => format!(
            "a renewal is already outstanding: connect with the certificate it issued, or \
             retry in {secs}s"
        ),
        _ => format!("renewed too recently: retry in {secs}s"),
    };
    EnrolError::RenewalRefused { code, message }
}

impl Enrolment {
    /// Renewal over an authenticated session: checks the limits, signs the CSR, records the
    /// new pin beside the old one (which is retired when the new one is seen in use).
    pub async fn renew(
        &self,
        agent_id: &str,
        current_pin: &str,
        csr: &str,
    ) -> Result<SignedIdentity, EnrolError> {
        let ca = self.ca.as_ref().ok_or(EnrolError::NoCa)?;
        let now_ms = clock::unix_ms();
        // Cheap pre-check, so a flood of renew frames costs a read each, not a signature.
        let last = self.store.renewal(agent_id).await?;
        if let Some(refusal) = renewal_refusal(last.as_ref(), now_ms, self.min_renewal_interval_ms)
        {
            return Err(refused(refusal));
        }
        let issued = ca
            .sign_agent_csr(csr, agent_id, Validity::days(self.cert_days))
            .map_err(|e| EnrolError::Invalid(format!("csr: {e}")))?;
        let record = RenewalRecord {
            agent_id: agent_id.to_owned(),
            old_pin: current_pin.to_owned(),
            new_pin: issued.pin.clone(),
            requested_at_ms: now_ms,
            completed: false,
        };
        let superseded = match self
            .store
            .start_renewal(record, self.min_renewal_interval_ms)
            .await?
        {
            RenewalStart::Started { superseded } => superseded,
            other => return Err(refused(other)),
        };
        self.registry.enrol(agent_id, &issued.pin);
        if let Some(unused) = superseded {
            self.registry.retire_pin(agent_id, &unused);
            info!(agent.id = %agent_id, pin = %unused, "outstanding renewal superseded; its pin is retired");
            self.retired(
                agent_id,
                &unused,
                "superseded by a later renewal, never used",
            );
        }
        self.registry.announce_identity(agent_id);
        info!(agent.id = %agent_id, old.pin = %current_pin, new.pin = %issued.pin, "certificate renewed");
        self.audit.record(events::renewed(agent_id, &issued.pin));
        Ok(SignedIdentity {
            agent_id: agent_id.to_owned(),
            certificate: issued.cert_pem,
            ca: issued.ca_pem,
            pin: issued.pin,
            hub_pins: self.hub_pins.load().to_vec(),
        })
    }

    /// A session authenticated with `pin`: completes a pending renewal by retiring the old pin.
    pub async fn on_session(&self, agent_id: &str, pin: &str) {
        // A plain read first: most sessions complete no renewal, and a reconnect storm
        // should not queue a write transaction per agent.
        match self.store.renewal(agent_id).await {
            Ok(Some(r)) if !r.completed && r.new_pin == pin => {}
            Ok(_) => return,
            Err(e) => {
                warn!(agent.id = %agent_id, error = %e, "could not read the pending renewal");
                return;
            }
        }
        match self.store.complete_renewal(agent_id, pin).await {
            Ok(Some(old)) => {
                self.registry.retire_pin(agent_id, &old);
                self.registry.announce_identity(agent_id);
                info!(agent.id = %agent_id, old.pin = %old, "old pin retired after renewal");
                self.retired(agent_id, &old, "retired after renewal");
            }
            Ok(None) => {}
            Err(e) => warn!(agent.id = %agent_id, error = %e, "could not complete the renewal"),
        }
    }

    fn retired(&self, agent_id: &str, pin: &str, reason: &str) {
        self.audit
            .record(events::pin_retired(agent_id, pin, reason));
    }
}
