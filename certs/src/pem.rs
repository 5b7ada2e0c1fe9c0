//! PEM reading (rustls-pki-types' [`PemObject`], the same parser rustls' loaders use) and
//! writing (RFC 7468 textual encoding), plus private keys in the forms the TLS loaders accept.
//!
//! One parser for every reader means a file `check-config`, the TLS loader and result signing
//! all accept is the same file: there is no second, stricter parser that silently disagrees.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::PrivateKeyDer;

use crate::{Error, Result};

/// Label of a certificate block.
pub(crate) const CERTIFICATE: &str = "CERTIFICATE";
/// Label of a PKCS#8 private key block.
pub(crate) const PRIVATE_KEY: &str = "PRIVATE KEY";
/// Label of a PKCS#10 certificate signing request.
pub(crate) const CERTIFICATE_REQUEST: &str = "CERTIFICATE REQUEST";
/// Legacy label some tools (Netscape, older OpenSSL) use for CSRs.
const NEW_CERTIFICATE_REQUEST: &str = "NEW CERTIFICATE REQUEST";

/// One decoded PEM block of a kind rustls-pki-types knows.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) kind: SectionKind,
    pub(crate) der: Vec<u8>,
}

/// Decodes every known PEM block in `pem`; text outside blocks and blocks of unknown labels
/// are skipped. Fails if there is no block at all.
pub(crate) fn parse_blocks(pem: &str) -> Result<Vec<Block>> {
    // The legacy CSR label is the one unknown label we honour: read it as the standard one.
    let legacy = format!("-----BEGIN {NEW_CERTIFICATE_REQUEST}-----");
    let text = if pem.contains(&legacy) {
        pem.replace(
            &format!(" {NEW_CERTIFICATE_REQUEST}-----"),
            &format!(" {CERTIFICATE_REQUEST}-----"),
        )
    } else {
        pem.to_owned()
    };
    let blocks = <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes())
        .map(|item| {
            let (kind, der) = item.map_err(|e| Error::Pem(e.to_string()))?;
            if der.is_empty() {
                return Err(Error::Pem(format!("{} block is empty", label(kind))));
            }
            Ok(Block { kind, der })
        })
        .collect::<Result<Vec<_>>>()?;
    if blocks.is_empty() {
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(Error::Pem(
                "the private key is encrypted; decrypt it with \
                 `openssl pkcs8 -in KEY -out KEY.pk8`"
                    .into(),
            ));
        }
        return Err(Error::Pem("no PEM block found".into()));
    }
    Ok(blocks)
}

/// The label of a block kind, for messages.
pub(crate) fn label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => CERTIFICATE,
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => PRIVATE_KEY,
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => CERTIFICATE_REQUEST,
        _ => "unknown",
    }
}

/// The first block, whatever its kind.
pub(crate) fn first_block(pem: &str) -> Result<Block> {
    parse_blocks(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Pem("no PEM block found".into()))
}

/// The first block of `kind`.
pub(crate) fn first_of(pem: &str, kind: SectionKind) -> Result<Vec<u8>> {
    parse_blocks(pem)?
        .into_iter()
        .find(|b| b.kind == kind)
        .map(|b| b.der)
        .ok_or_else(|| missing(kind))
}

/// Encodes `der` as one PEM block with 64-character lines and a trailing newline.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so any chunk boundary is a char boundary.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// DER of every `CERTIFICATE` block in `pem`, in order. Fails if there is none.
pub fn certs_der_from_pem(pem: &str) -> Result<Vec<Vec<u8>>> {
    let certs: Vec<Vec<u8>> = parse_blocks(pem)?
        .into_iter()
        .filter(|b| b.kind == SectionKind::Certificate)
        .map(|b| b.der)
        .collect();
    if certs.is_empty() {
        return Err(missing(SectionKind::Certificate));
    }
    Ok(certs)
}

/// DER of the first private key in `pem`, which must be unencrypted PKCS#8 (`PRIVATE KEY`).
///
/// PKCS#8 is what this crate writes and what the CA key must be. Legacy SEC1
/// (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) blocks are refused with a hint on how to
/// convert them; [`private_key_from_pem`] accepts those too.
pub fn private_key_der_from_pem(pem: &str) -> Result<Vec<u8>> {
    match private_key_from_pem(pem)? {
        PrivateKeyDer::Pkcs8(der) => Ok(der.secret_pkcs8_der().to_vec()),
        other => Err(Error::Pem(format!(
            "{} is not supported; convert it to PKCS#8 with \
             `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`",
            key_label(&other)
        ))),
    }
}

/// The first private key in `pem` in any form rustls loads: PKCS#8 (`PRIVATE KEY`), SEC1
/// (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    let block = parse_blocks(pem)?
        .into_iter()
        .find(|b| {
            matches!(
                b.kind,
                SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey
            )
        })
        .ok_or_else(|| missing(SectionKind::PrivateKey))?;
    PrivateKeyDer::from_pem(block.kind, block.der).ok_or_else(|| missing(SectionKind::PrivateKey))
}

/// The private key in `pem` as PKCS#8 DER, for ECDSA P-256 signing with ring: PKCS#8 as it is,
/// SEC1 (`EC PRIVATE KEY`) wrapped into PKCS#8 the way rustls does it. PKCS#1 RSA keys are
/// refused: agent keys are P-256 (what enrolment issues), and result signatures are ECDSA.
/// Whether the key really is P-256 is checked by whoever loads the PKCS#8 (ring refuses a
/// SEC1 key of another curve because its parameters do not match the P-256 template).
pub fn p256_pkcs8_der_from_pem(pem: &str) -> Result<Vec<u8>> {
    match private_key_from_pem(pem)? {
        PrivateKeyDer::Pkcs8(der) => Ok(der.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Sec1(der) => Ok(sec1_to_pkcs8(der.secret_sec1_der())),
        other => Err(Error::Invalid(format!(
            "{} keys cannot sign results; agent keys must be ECDSA P-256",
            key_label(&other)
        ))),
    }
}

/// AlgorithmIdentifier { id-ecPublicKey, prime256v1 } preceded by PKCS#8 version 0.
const PKCS8_P256_PREFIX: &[u8] = &[
    0x02, 0x01, 0x00, // version 0
    0x30, 0x13, // AlgorithmIdentifier
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // prime256v1
];

/// PrivateKeyInfo { 0, P-256 algorithm, OCTET STRING { the SEC1 ECPrivateKey } }.
fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    let octets = der_tlv(0x04, &[sec1]);
    der_tlv(0x30, &[PKCS8_P256_PREFIX, &octets])
}

/// One DER TLV of `tag` around the concatenated `parts`.
fn der_tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = vec![tag];
    let be = len.to_be_bytes();
    let significant = be.iter().skip_while(|b| **b == 0).count();
    if len < 0x80 {
        out.push(be[be.len() - 1]);
    } else {
        // A key is far below 2^32 bytes; `significant` is 1..=8 and always fits.
        out.push(0x80 | significant as u8);
        out.extend_from_slice(&be[be.len() - significant..]);
    }
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

fn key_label(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY (PKCS#1)",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY (SEC1)",
        PrivateKeyDer::Pkcs8(_) => "PRIVATE KEY (PKCS#8)",
        _ => "this private key format",
    }
}

fn missing(kind: SectionKind) -> Error {
    Error::Pem(format!("no {} block found", label(kind)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_round_trips() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = encode(CERTIFICATE, &der);
        assert!(text.lines().all(|l| l.len() <= 64));
        let blocks = parse_blocks(&text).unwrap();
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].kind == SectionKind::Certificate);
        assert_eq!(blocks[0].der, der);
    }

    #[test]
    fn finds_all_certificates_and_skips_other_text() {
        let text = format!(
            "comment\r\n{}junk\n{}{}",
            encode(CERTIFICATE, b"one"),
            encode(PRIVATE_KEY, b"key"),
            encode(CERTIFICATE, b"two")
        )
        .replace('\n', "\r\n");
        let certs = certs_der_from_pem(&text).unwrap();
        assert_eq!(certs, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(private_key_der_from_pem(&text).unwrap(), b"key");
    }

    #[test]
    fn rejects_malformed_input() {
        assert!(parse_blocks("").is_err());
        assert!(parse_blocks("-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
        assert!(
            parse_blocks("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").is_err()
        );
        assert!(certs_der_from_pem(&encode(PRIVATE_KEY, b"k")).is_err());
        let sec1 = encode("EC PRIVATE KEY", b"k");
        let msg = private_key_der_from_pem(&sec1).unwrap_err().to_string();
        assert!(msg.contains("PKCS#8"), "{msg}");
        let msg = parse_blocks(&encode("ENCRYPTED PRIVATE KEY", b"k"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("encrypted"), "{msg}");
        let rsa = encode("RSA PRIVATE KEY", b"k");
        let msg = p256_pkcs8_der_from_pem(&rsa).unwrap_err().to_string();
        assert!(msg.contains("P-256"), "{msg}");
    }

    #[test]
    fn der_lengths_use_the_short_and_long_forms() {
        assert_eq!(der_tlv(0x04, &[b"ab"]), [0x04, 2, b'a', b'b']);
        let long = der_tlv(0x04, &[&[7u8; 200]]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        let longer = der_tlv(0x30, &[&[7u8; 300]]);
        assert_eq!(&longer[..4], &[0x30, 0x82, 0x01, 0x2c]);
        assert_eq!(longer.len(), 304);
    }
}
