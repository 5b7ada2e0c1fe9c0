//! Who is on the other end: the certificate's CN and pin, taken from the TLS session or —
//! only from a pinned trusted proxy such as nginx — from the forwarded-certificate header.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

/// Header in which a trusted proxy forwards the agent's certificate (URL-encoded PEM, as
/// nginx's `$ssl_client_escaped_cert` gives it).
pub const FORWARDED_CERT_HEADER: &str = "x-agentmesh-client-cert";

/// The identity a connection presents.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// Subject CN = agent id.
    pub cn: String,
    /// `sha256//…` pin of the certificate's public key.
    pub pin: String,
    /// DER SubjectPublicKeyInfo (to check result signatures).
    pub spki: Vec<u8>,
    /// Pin of the trusted proxy that forwarded the certificate, if any.
    pub via_proxy: Option<String>,
}

/// A connection refused before it became a session.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Stable reason code (logs, metrics, audit).
    pub reason: &'static str,
    /// Details for the log.
    pub detail: String,
}

impl Rejection {
    /// Builds a rejection.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// Reads CN, pin and SubjectPublicKeyInfo from a certificate the TLS layer already
/// verified. A certificate whose public key cannot be extracted fails the handshake: an
/// empty key would make every signed result of the session look forged.
pub fn from_der(der: &[u8]) -> Result<(String, String, Vec<u8>), Rejection> {
    let cn = mesh_certs::common_name_from_cert_der(der)
        .map_err(|e| Rejection::new("bad_certificate", format!("no usable subject CN: {e}")))?;
    let spki = spki_of(der)?;
    // The pin is computed from the very bytes later used to check signatures.
    let pin = mesh_certs::pin_from_spki_der(&spki);
    Ok((cn, pin, spki))
}

/// Resolves the identity of a connection whose TLS peer certificate is `tls_der`.
///
/// A forwarded certificate is honoured only when the TLS peer's own pin is one of
/// `trusted_proxy_pins`; it is then verified against the mesh CA exactly like a direct one.
pub fn resolve(
    tls_der: &[u8],
    forwarded: Option<&str>,
    trusted_proxy_pins: &[String],
    verifier: &Arc<dyn ClientCertVerifier>,
) -> Result<PeerIdentity, Rejection> {
    let (cn, pin, spki) = from_der(tls_der)?;
    if !trusted_proxy_pins.contains(&pin) {
        return Ok(PeerIdentity {
            cn,
            pin,
            spki,
            via_proxy: None,
        });
    }
    let encoded = forwarded.ok_or_else(|| {
        Rejection::new(
            "proxy_without_client_cert",
            format!("trusted proxy {cn} forwarded no {FORWARDED_CERT_HEADER} header"),
        )
    })?;
    let pem = percent_decode(encoded);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Rejection::new("bad_certificate", format!("forwarded certificate: {e}")))?;
    let (leaf, intermediates) = certs
        .split_first()
        .ok_or_else(|| Rejection::new("no_cert", "forwarded header holds no certificate"))?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            Rejection::new(
                super::tls::classify_handshake_error(&io),
                format!("forwarded certificate: {}", io),
            )
        })?;
    let (cn, agent_pin, spki) = from_der(leaf.as_ref())?;
    Ok(PeerIdentity {
        cn,
        pin: agent_pin,
        spki,
        via_proxy: Some(pin),
    })
}

/// The DER SubjectPublicKeyInfo, byte for byte as encoded in the certificate.
fn spki_of(der: &[u8]) -> Result<Vec<u8>, Rejection> {
    let spki = mesh_certs::spki_der_from_cert_der(der).map_err(|e| {
        Rejection::new(
            "bad_certificate",
            format!("cannot extract the public key: {e}"),
        )
    })?;
    if spki.is_empty() {
        return Err(Rejection::new("bad_certificate", "empty public key"));
    }
    Ok(spki)
}

/// Decodes `%XX` escapes (nginx escapes newlines, spaces and `+` in the PEM).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{from_der, percent_decode, spki_of};
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn a_certificate_without_an_extractable_key_is_refused() {
        let ca = mesh_certs::Ca::generate("identity test CA").unwrap();
        let issued = ca
            .issue_agent("edge-01", mesh_certs::Validity::days(1))
            .unwrap();
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (cn, pin, spki) = from_der(der.as_ref()).unwrap();
        assert_eq!(cn, "edge-01");
        assert_eq!(pin, issued.pin, "the pin is the SPKI's");
        assert!(!spki.is_empty());
        // Cut off inside the SubjectPublicKeyInfo: no empty key, a refusal.
        let cut = &der.as_ref()[..der.as_ref().len() / 2];
        let err = spki_of(cut).unwrap_err();
        assert_eq!(err.reason, "bad_certificate");
        assert!(spki_of(b"not a certificate").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%0A%2Bc"), "a b\n+c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
