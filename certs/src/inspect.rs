//! Human- and machine-readable summaries of certificates (`mesh-certs inspect`).

use std::fmt;
use std::net::IpAddr;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use rustls_pki_types::pem::SectionKind;

use crate::pem;
use crate::{pin_from_spki_der, x509, Error, Result};

/// Where a certificate stands relative to the current time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertStatus {
    /// Within its validity window.
    Valid,
    /// `not_before` is in the future.
    NotYetValid,
    /// `not_after` is in the past.
    Expired,
}

impl fmt::Display for CertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertStatus::Valid => "valid",
            CertStatus::NotYetValid => "not yet valid",
            CertStatus::Expired => "expired",
        })
    }
}

/// What `mesh-certs inspect` shows about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=web-01`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Subject CN, if any.
    pub common_name: Option<String>,
    /// Subject alternative names: DNS names and IP addresses as plain strings, other kinds
    /// prefixed (`email:`, `URI:`, `other:`).
    pub sans: Vec<String>,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Validity relative to the time of inspection.
    pub status: CertStatus,
    /// SPKI pin (`sha256//...`).
    pub pin: String,
    /// Whether basicConstraints says `CA:true`.
    pub is_ca: bool,
    /// Extended key usages by their RFC 5280 short names (`serverAuth`, `clientAuth`, ...);
    /// unknown ones as dotted OIDs.
    pub ext_key_usage: Vec<String>,
}

/// Summarises the first `CERTIFICATE` block of `pem`.
pub fn inspect_pem(pem: &str) -> Result<CertInfo> {
    inspect_der(&pem::first_of(pem, SectionKind::Certificate)?)
}

/// Summarises a DER certificate.
pub fn inspect_der(cert_der: &[u8]) -> Result<CertInfo> {
    let cert = x509::parse_cert(cert_der)?;
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
    );
    let now = OffsetDateTime::now_utc();
    let status = if now < not_before {
        CertStatus::NotYetValid
    } else if now > not_after {
        CertStatus::Expired
    } else {
        CertStatus::Valid
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        common_name: x509::common_name(&cert)?,
        sans: sans(&cert)?,
        serial: cert.raw_serial_as_string(),
        not_before: rfc3339(not_before)?,
        not_after: rfc3339(not_after)?,
        status,
        pin: pin_from_spki_der(cert.tbs_certificate.subject_pki.raw),
        is_ca: cert.is_ca(),
        ext_key_usage: ext_key_usage(&cert)?,
    })
}

impl fmt::Display for CertInfo {
    /// One `key: value` per line; empty lists and a missing CN show as `-`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: &[String]| {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.join(", ")
            }
        };
        writeln!(f, "subject: {}", self.subject)?;
        writeln!(f, "issuer: {}", self.issuer)?;
        writeln!(
            f,
            "common_name: {}",
            self.common_name.as_deref().unwrap_or("-")
        )?;
        writeln!(f, "sans: {}", list(&self.sans))?;
        writeln!(f, "serial: {}", self.serial)?;
        writeln!(f, "not_before: {}", self.not_before)?;
        writeln!(f, "not_after: {}", self.not_after)?;
        writeln!(f, "status: {}", self.status)?;
        writeln!(f, "is_ca: {}", self.is_ca)?;
        writeln!(f, "ext_key_usage: {}", list(&self.ext_key_usage))?;
        write!(f, "pin: {}", self.pin)
    }
}

fn rfc3339(t: OffsetDateTime) -> Result<String> {
    t.format(&Rfc3339)
        .map_err(|e| Error::Invalid(format!("cannot format time {t}: {e}")))
}

fn sans(cert: &X509Certificate<'_>) -> Result<Vec<String>> {
    let Some(ext) = cert
        .subject_alternative_name()
        .map_err(|e| Error::Parse(format!("subjectAltName: {e}")))?
    else {
        return Ok(Vec::new());
    };
    Ok(ext
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => (*dns).to_owned(),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map_or_else(
                || format!("IP:<{} bytes>", bytes.len()),
                |ip| ip.to_string(),
            ),
            GeneralName::RFC822Name(mail) => format!("email:{mail}"),
            GeneralName::URI(uri) => format!("URI:{uri}"),
            other => format!("other:{other:?}"),
        })
        .collect())
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn ext_key_usage(cert: &X509Certificate<'_>) -> Result<Vec<String>> {
    let Some(ext) = cert
        .extended_key_usage()
        .map_err(|e| Error::Parse(format!("extendedKeyUsage: {e}")))?
    else {
        return Ok(Vec::new());
    };
    let eku = ext.value;
    let known = [
        (eku.any, "anyExtendedKeyUsage"),
        (eku.server_auth, "serverAuth"),
        (eku.client_auth, "clientAuth"),
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.time_stamping, "timeStamping"),
        (eku.ocsp_signing, "OCSPSigning"),
    ];
    Ok(known
        .into_iter()
        .filter(|(present, _)| *present)
        .map(|(_, name)| name.to_owned())
        .chain(eku.other.iter().map(|oid| oid.to_id_string()))
        .collect())
}
