//! Certificate renewal over the authenticated session (no operator action, no outage).
//!
//! ```text
//!  welcome, then hourly ──► cert expires within the window? ── no ──► check again in an hour
//!                                   │ yes
//!                                   ▼
//!            new P-256 key + CSR (here; the key never leaves the host) ──► renew {csr}
//!                                   │
//!        renewed {certificate} ◄────┴────► error renew_failed / no answer in 30 s
//!                 │                              └─► log, try again in an hour
//!                 ▼
//!  check: CN = agent id, pin = the CSR's pin, chains to outbound.ca as a client certificate
//!  install key + cert atomically (see `install`), reload the signer, audit `enrolled`,
//!  close 1000 "certificate renewed", reconnect at once with the new certificate
//! ```
//!
//! The window is `renew_before_days`, capped at the last third of the certificate's lifetime:
//! a hub that issues certificates shorter than the window (say 7 days against the default 15)
//! would otherwise have every fresh certificate renewed again right after the reconnect, in a
//! loop. For the same reason a completed renewal is followed by at least one check interval
//! without another one (a badly wrong clock cannot make the agent renew on every connect).
//!
//! The hub enrols the new pin beside the old one and retires the old pin once a session
//! authenticates with the new one, so a renewal that fails half-way leaves the agent with a
//! working identity either way.

mod install;

use std::path::PathBuf;
use std::time::Duration;

use agentmesh_protocol::ErrorBody;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};

use crate::audit::AgentAudit;
use crate::config::GatewayConfig;
use crate::signing::Signer;

pub use install::{install_pair, recover, Installed};

/// How often a live session checks the certificate's expiry.
pub const RENEW_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// How long the hub has to answer `renew`.
pub const RENEW_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What renewal needs from the config.
#[derive(Debug, Clone)]
pub struct RenewSettings {
    /// `agent.id`: the CN the new certificate must carry.
    pub agent_id: String,
    /// `outbound.cert`, replaced by the new certificate.
    pub cert: PathBuf,
    /// `outbound.key`, replaced by the new key.
    pub key: PathBuf,
    /// `outbound.ca`: the new certificate must chain to it.
    pub ca: PathBuf,
    /// `agent.renew_before_days`.
    pub renew_before: Duration,
    /// Between two expiry checks.
    pub check_every: Duration,
    /// How long to wait for `renewed`.
    pub answer_timeout: Duration,
}

impl RenewSettings {
    /// The settings of a loaded config.
    pub fn from_config(config: &GatewayConfig) -> RenewSettings {
        RenewSettings {
            agent_id: config.agent.id.clone(),
            cert: config.outbound.cert.clone(),
            key: config.outbound.key.clone(),
            ca: config.outbound.ca.clone(),
            renew_before: Duration::from_secs(u64::from(config.agent.renew_before_days) * 86_400),
            check_every: RENEW_CHECK_EVERY,
            answer_timeout: RENEW_ANSWER_TIMEOUT,
        }
    }
}

/// Why a `renewed` answer was not installed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// No renewal was asked for (or it already timed out).
    #[error("this agent did not ask for a certificate")]
    NotRequested,
    /// The certificate is not one this agent can use.
    #[error("renewed certificate refused: {0}")]
    Refused(String),
    /// Writing the new key and certificate failed.
    #[error("cannot install the renewed certificate: {0}")]
    Install(String),
}

/// A renewal asked for and not yet answered. The key is secret: never logged.
struct Pending {
    key_pem: String,
    csr_pin: String,
    deadline: Instant,
}

/// The renewal state of the agent; lives across sessions in the dialer.
pub struct Renewal {
    settings: Option<RenewSettings>,
    signer: Signer,
    audit: Option<AgentAudit>,
    next_check: Instant,
    pending: Option<Pending>,
    last_renewed: Option<Instant>,
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("enabled", &self.settings.is_some())
            .field("pending", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl Renewal {
    /// Renewal as configured; installs through `signer` and records in `audit`.
    pub fn new(settings: RenewSettings, signer: Signer, audit: Option<AgentAudit>) -> Renewal {
        Renewal {
            settings: Some(settings),
            signer,
            audit,
            next_check: Instant::now(),
            pending: None,
            last_renewed: None,
        }
    }

    /// Never renews (tests of other things).
    pub fn disabled() -> Renewal {
        Renewal {
            settings: None,
            signer: Signer::disabled(),
            audit: None,
            next_check: Instant::now(),
            pending: None,
            last_renewed: None,
        }
    }

    /// A session was welcomed: check now (unless a renewal just completed), forget any
    /// request of an earlier session.
    pub fn session_started(&mut self) {
        self.pending = None;
        let now = Instant::now();
        self.next_check = match (self.last_renewed, &self.settings) {
            (Some(at), Some(s)) => (at + s.check_every).max(now),
            _ => now,
        };
    }

    /// Resolves when [`Renewal::step`] has something to do. Cancel-safe.
    pub async fn wait(&self) {
        match (&self.settings, &self.pending) {
            (None, _) => std::future::pending().await,
            (Some(_), Some(p)) => sleep_until(p.deadline).await,
            (Some(_), None) => sleep_until(self.next_check).await,
        }
    }

    /// Times out an unanswered request, or checks the certificate and returns the CSR to
    /// send in a `renew` frame when it is due.
    pub async fn step(&mut self) -> Option<String> {
        let settings = self.settings.clone()?;
        let now = Instant::now();
        if let Some(p) = &self.pending {
            if now >= p.deadline {
                warn!(
                    timeout_secs = settings.answer_timeout.as_secs(),
                    "the hub did not answer the certificate renewal; trying again in an hour"
                );
                self.pending = None;
                self.next_check = now + settings.check_every;
            }
            return None;
        }
        if now < self.next_check {
            return None;
        }
        self.next_check = now + settings.check_every;
        let prepared = tokio::task::spawn_blocking(move || prepare(&settings)).await;
        match prepared {
            Ok(Ok(Some(request))) => {
                info!(
                    not_after = %request.not_after,
                    "the agent certificate expires soon; asking the hub for a new one"
                );
                self.pending = Some(Pending {
                    key_pem: request.key_pem,
                    csr_pin: request.csr_pin,
                    deadline: now + self.settings.as_ref()?.answer_timeout,
                });
                Some(request.csr)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot check the certificate for renewal; trying again in an hour");
                None
            }
            Err(e) => {
                error!(error = %e, "renewal check failed");
                None
            }
        }
    }

    /// The hub answered `renewed`: checks and installs the certificate, reloads the signer,
    /// audits `enrolled`. The session must then close and reconnect with the new certificate.
    pub async fn on_renewed(
        &mut self,
        certificate: String,
        ca: String,
        pin: String,
    ) -> Result<Installed, RenewError> {
        let (Some(settings), Some(pending)) = (self.settings.clone(), self.pending.take()) else {
            return Err(RenewError::NotRequested);
        };
        self.next_check = Instant::now() + settings.check_every;
        let installed = tokio::task::spawn_blocking(move || {
            install::accept(
                &settings,
                &pending.key_pem,
                &pending.csr_pin,
                &certificate,
                &ca,
                &pin,
            )
        })
        .await
        .map_err(|e| RenewError::Install(e.to_string()))??;
        self.last_renewed = Some(Instant::now());
        if let Err(e) = self.signer.reload() {
            warn!(error = %e, "cannot load the renewed key for signing results");
        }
        info!(
            pin = %installed.pin,
            previous_pin = installed.previous_pin.as_deref().unwrap_or("-"),
            not_after = %installed.not_after,
            "certificate renewed and installed"
        );
        if let Some(audit) = &self.audit {
            let extra = serde_json::json!({
                "previous_pin": installed.previous_pin,
                "not_after": installed.not_after,
            });
            audit.enrolled("renewal", &installed.pin, extra).await;
        }
        Ok(installed)
    }

    /// An `error` frame arrived: a `renew_failed` ends the pending request.
    pub fn on_error(&mut self, error: &ErrorBody) {
        if error.code == "renew_failed" && self.pending.take().is_some() {
            warn!(message = %error.message, "the hub refused to renew the certificate; trying again in an hour");
        }
    }
}

/// A renewal about to be asked for.
struct Request {
    csr: String,
    key_pem: String,
    csr_pin: String,
    not_after: String,
}

/// Reads the current certificate; when it is due, a new key and its CSR.
fn prepare(settings: &RenewSettings) -> Result<Option<Request>, String> {
    let pem = std::fs::read_to_string(&settings.cert)
        .map_err(|e| format!("{}: {e}", settings.cert.display()))?;
    let info = mesh_certs::inspect_pem(&pem).map_err(|e| e.to_string())?;
    let parse = |t: &str| OffsetDateTime::parse(t, &Rfc3339).map_err(|e| format!("{t}: {e}"));
    let (not_before, not_after) = (parse(&info.not_before)?, parse(&info.not_after)?);
    let renew_before =
        time::Duration::try_from(settings.renew_before).map_err(|e| e.to_string())?;
    if !renewal_due(
        not_before,
        not_after,
        OffsetDateTime::now_utc(),
        renew_before,
    ) {
        debug!(not_after = %info.not_after, "certificate not due for renewal");
        return Ok(None);
    }
    install::check_writable(&settings.key, &settings.cert).map_err(|e| {
        format!(
            "the certificate is due for renewal but outbound.key/outbound.cert cannot be \
             replaced ({e}); give the agent write access to their directory"
        )
    })?;
    let (csr, key_pem) = mesh_certs::generate_csr(&settings.agent_id).map_err(|e| e.to_string())?;
    let csr_pin = mesh_certs::pin_from_pem(&csr).map_err(|e| e.to_string())?;
    Ok(Some(Request {
        csr,
        key_pem,
        csr_pin,
        not_after: info.not_after,
    }))
}

/// Whether a certificate valid from `not_before` to `not_after` is due at `now`: it expires
/// within `renew_before`, or within the last third of its lifetime if that is shorter.
pub fn renewal_due(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    renew_before: time::Duration,
) -> bool {
    let window = renew_before.min((not_after - not_before) / 3);
    not_after - now <= window
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mesh_certs::{Ca, Validity};
    use time::Duration as D;

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_or_refused_request_is_retried_an_hour_later() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let validity = Validity {
            not_before: now - D::days(10),
            not_after: now + D::days(1),
        };
        let ca = Ca::generate("test CA").unwrap();
        ca.issue_agent("edge-01", validity)
            .unwrap()
            .save(dir.path())
            .unwrap();
        let settings = RenewSettings {
            agent_id: "edge-01".into(),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca: dir.path().join("ca.pem"),
            renew_before: Duration::from_secs(15 * 86_400),
            check_every: RENEW_CHECK_EVERY,
            answer_timeout: RENEW_ANSWER_TIMEOUT,
        };
        let mut renewal = Renewal::new(settings, Signer::disabled(), None);
        renewal.session_started();
        let csr = renewal.step().await.expect("due at once");
        assert!(csr.contains("CERTIFICATE REQUEST"));
        // No answer: after 30 s the request is dropped, and nothing happens for an hour.
        let asked = Instant::now();
        renewal.wait().await;
        assert!(asked.elapsed() >= RENEW_ANSWER_TIMEOUT);
        assert_eq!(renewal.step().await, None);
        assert!(matches!(
            renewal
                .on_renewed(String::new(), String::new(), String::new())
                .await,
            Err(RenewError::NotRequested)
        ));
        renewal.wait().await;
        assert!(asked.elapsed() >= RENEW_ANSWER_TIMEOUT + RENEW_CHECK_EVERY);
        assert!(renewal.step().await.is_some());
        // Refused: the next request is again an hour away.
        renewal.on_error(&ErrorBody::new("renew_failed", "no CA"));
        assert_eq!(renewal.step().await, None);
        assert!(Renewal::disabled().step().await.is_none());
    }

    #[test]
    fn due_within_the_window_capped_at_a_third_of_the_lifetime() {
        let now = OffsetDateTime::now_utc();
        let due = |from: i64, to: i64| {
            renewal_due(now + D::days(from), now + D::days(to), now, D::days(15))
        };
        // A year-long certificate: renewed in its last 15 days.
        assert!(!due(-300, 65));
        assert!(due(-355, 10));
        // A fresh 2-day or 7-day certificate is not renewed at once (no renewal loop)...
        assert!(!due(0, 2));
        assert!(!due(0, 7));
        // ...but is in the last third of its life.
        assert!(due(-5, 2));
        assert!(due(-10, 1));
        // Expired: due.
        assert!(due(-30, -1));
    }
}
