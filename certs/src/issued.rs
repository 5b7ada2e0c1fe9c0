//! What issuance takes ([`Validity`]) and returns ([`Issued`]).

use std::fmt;
use std::path::Path;

use time::{Duration, OffsetDateTime};

use crate::files::{create_dir, write_private, write_public};
use crate::{Error, Result, CA_CERT_FILE, CERT_FILE, KEY_FILE};

/// How far back `not_before` is set, so peers with slightly slow clocks accept a new certificate.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Default lifetime of a leaf certificate, in days.
pub const DEFAULT_LEAF_DAYS: i64 = 365;

/// Validity window of an issued certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of the window.
    pub not_before: OffsetDateTime,
    /// End of the window.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From five minutes ago (clock skew) until `n` days from now.
    pub fn days(n: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::days(n),
        }
    }

    /// Refuses empty windows and windows that outlast the issuing CA.
    pub(crate) fn check(&self, ca_not_after: OffsetDateTime) -> Result<()> {
        if self.not_after <= self.not_before {
            return Err(Error::Invalid(format!(
                "validity ends ({}) before it starts ({})",
                self.not_after, self.not_before
            )));
        }
        if self.not_after > ca_not_after {
            return Err(Error::Invalid(format!(
                "certificate would expire ({}) after its CA ({}); use a shorter validity or a new CA",
                self.not_after, ca_not_after
            )));
        }
        Ok(())
    }
}

impl Default for Validity {
    /// [`DEFAULT_LEAF_DAYS`] (365) days, for leaf certificates.
    fn default() -> Validity {
        Validity::days(DEFAULT_LEAF_DAYS)
    }
}

/// A freshly issued leaf certificate.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its PKCS#8 private key, PEM; empty when the certificate was issued for a CSR.
    pub key_pem: String,
    /// The issuing CA's certificate, PEM.
    pub ca_pem: String,
    /// The certificate's SPKI pin (`sha256//...`).
    pub pin: String,
}

impl Issued {
    /// Writes `DIR/cert.pem`, `DIR/key.pem` (mode 0600; skipped when there is no key) and
    /// `DIR/ca.pem`, creating `DIR` if needed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        create_dir(dir)?;
        if !self.key_pem.is_empty() {
            write_private(&dir.join(KEY_FILE), &self.key_pem)?;
        }
        write_public(&dir.join(CERT_FILE), &self.cert_pem)?;
        write_public(&dir.join(CA_CERT_FILE), &self.ca_pem)
    }
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key_pem.is_empty() { "" } else { "***" };
        f.debug_struct("Issued")
            .field("pin", &self.pin)
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &key)
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .finish()
    }
}
