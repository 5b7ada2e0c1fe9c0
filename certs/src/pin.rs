//! SPKI pins: `sha256//` + standard base64 of SHA-256 over the DER SubjectPublicKeyInfo.
//!
//! This is the string `curl --pinnedpubkey` accepts, and it stays the same when a certificate is
//! re-issued for the same key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use rustls_pki_types::pem::SectionKind;

use crate::pem;
use crate::{x509, Error, Result};

/// Prefix of every pin.
pub const PIN_PREFIX: &str = "sha256//";

/// The pin of a DER SubjectPublicKeyInfo (hashed as given, not re-encoded).
pub fn pin_from_spki_der(spki_der: &[u8]) -> String {
    format!("{PIN_PREFIX}{}", STANDARD.encode(Sha256::digest(spki_der)))
}

/// The pin of a DER certificate's public key.
pub fn pin_from_cert_der(cert_der: &[u8]) -> Result<String> {
    let cert = x509::parse_cert(cert_der)?;
    Ok(pin_from_spki_der(cert.tbs_certificate.subject_pki.raw))
}

/// The pin of the first PEM block, which must be a `CERTIFICATE`, a `PUBLIC KEY` or a
/// `CERTIFICATE REQUEST` (also the legacy `NEW CERTIFICATE REQUEST`).
pub fn pin_from_pem(pem: &str) -> Result<String> {
    let block = pem::first_block(pem)?;
    match block.kind {
        SectionKind::Certificate => pin_from_cert_der(&block.der),
        SectionKind::PublicKey => Ok(pin_from_spki_der(x509::parse_spki(&block.der)?.raw)),
        SectionKind::Csr => {
            let csr = x509::parse_csr(&block.der)?;
            Ok(pin_from_spki_der(
                csr.certification_request_info.subject_pki.raw,
            ))
        }
        other => Err(Error::Pem(format!(
            "first block is {}; expected CERTIFICATE, PUBLIC KEY or CERTIFICATE REQUEST",
            pem::label(other)
        ))),
    }
}

/// Whether `pin` looks like a pin this crate produces (`sha256//` + 44 base64 characters).
pub fn is_valid_pin(pin: &str) -> bool {
    pin.strip_prefix(PIN_PREFIX)
        .and_then(|b64| STANDARD.decode(b64).ok())
        .is_some_and(|digest| digest.len() == 32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pin_of_known_input() {
        // echo -n "" | openssl dgst -sha256 -binary | base64
        assert_eq!(
            pin_from_spki_der(b""),
            "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn validates_pins() {
        assert!(is_valid_pin(&pin_from_spki_der(b"x")));
        assert!(!is_valid_pin("sha256//abc="));
        assert!(!is_valid_pin(
            "sha1//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        ));
    }

    #[test]
    fn rejects_other_blocks() {
        let key = crate::pem::encode(crate::pem::PRIVATE_KEY, b"k");
        let msg = pin_from_pem(&key).unwrap_err().to_string();
        assert!(msg.contains("PRIVATE KEY"), "{msg}");
        assert!(pin_from_pem("not pem").is_err());
    }
}
