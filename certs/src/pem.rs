//! Minimal PEM reading and writing (RFC 7468 textual encoding).
//!
//! We parse PEM ourselves instead of pulling in another crate so that error messages can say
//! exactly which block was missing or malformed.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::{Error, Result};

/// Label of a certificate block.
pub(crate) const CERTIFICATE: &str = "CERTIFICATE";
/// Label of a PKCS#8 private key block.
pub(crate) const PRIVATE_KEY: &str = "PRIVATE KEY";
/// Label of a SubjectPublicKeyInfo block.
pub(crate) const PUBLIC_KEY: &str = "PUBLIC KEY";
/// Label of a PKCS#10 certificate signing request.
pub(crate) const CERTIFICATE_REQUEST: &str = "CERTIFICATE REQUEST";
/// Legacy label some tools (Netscape, older OpenSSL) use for CSRs.
pub(crate) const NEW_CERTIFICATE_REQUEST: &str = "NEW CERTIFICATE REQUEST";

/// One decoded `-----BEGIN label----- ... -----END label-----` block.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) label: String,
    pub(crate) der: Vec<u8>,
}

/// Decodes every PEM block in `pem`; text outside blocks is ignored. Fails if there is none.
pub(crate) fn parse_blocks(pem: &str) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in pem.lines().map(str::trim) {
        match current.take() {
            None => {
                if let Some(label) = marker(line, "BEGIN") {
                    current = Some((label.to_owned(), String::new()));
                }
            }
            Some((label, mut body)) => {
                if let Some(end) = marker(line, "END") {
                    if end != label {
                        return Err(Error::Pem(format!(
                            "block BEGIN {label} is closed by END {end}"
                        )));
                    }
                    blocks.push(decode_block(label, &body)?);
                } else if line.contains(':') {
                    // RFC 1421 headers only appear in legacy encrypted keys.
                    return Err(Error::Pem(format!(
                        "{label} block has headers ({line}); encrypted PEM is not supported"
                    )));
                } else {
                    body.extend(line.split_whitespace());
                    current = Some((label, body));
                }
            }
        }
    }
    if let Some((label, _)) = current {
        return Err(Error::Pem(format!("{label} block has no END line")));
    }
    if blocks.is_empty() {
        return Err(Error::Pem("no PEM block found".into()));
    }
    Ok(blocks)
}

/// The first block, whatever its label.
pub(crate) fn first_block(pem: &str) -> Result<Block> {
    parse_blocks(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Pem("no PEM block found".into()))
}

/// The first block labelled `label`.
pub(crate) fn first_labelled(pem: &str, label: &str) -> Result<Vec<u8>> {
    parse_blocks(pem)?
        .into_iter()
        .find(|b| b.label == label)
        .map(|b| b.der)
        .ok_or_else(|| missing(label))
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
        .filter(|b| b.label == CERTIFICATE)
        .map(|b| b.der)
        .collect();
    if certs.is_empty() {
        return Err(missing(CERTIFICATE));
    }
    Ok(certs)
}

/// DER of the first private key in `pem`, which must be unencrypted PKCS#8 (`PRIVATE KEY`).
///
/// PKCS#8 is what this crate writes and what ring (hence rustls with the ring provider) loads for
/// every key type. Legacy SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) blocks are
/// refused with a hint on how to convert them.
pub fn private_key_der_from_pem(pem: &str) -> Result<Vec<u8>> {
    let block = parse_blocks(pem)?
        .into_iter()
        .find(|b| b.label.ends_with(PRIVATE_KEY))
        .ok_or_else(|| missing(PRIVATE_KEY))?;
    match block.label.as_str() {
        PRIVATE_KEY => Ok(block.der),
        "ENCRYPTED PRIVATE KEY" => Err(Error::Pem(
            "the private key is encrypted; decrypt it with `openssl pkcs8 -in KEY -out KEY.pk8`"
                .into(),
        )),
        other => Err(Error::Pem(format!(
            "{other} is not supported; convert it to PKCS#8 with \
             `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`"
        ))),
    }
}

fn missing(label: &str) -> Error {
    Error::Pem(format!("no {label} block found"))
}

/// Returns the label of a `-----{kind} label-----` line.
fn marker<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
    line.strip_prefix("-----")?
        .strip_prefix(kind)?
        .strip_prefix(' ')?
        .strip_suffix("-----")
}

fn decode_block(label: String, body: &str) -> Result<Block> {
    let der = STANDARD
        .decode(body)
        .map_err(|e| Error::Pem(format!("{label} block is not valid base64: {e}")))?;
    if der.is_empty() {
        return Err(Error::Pem(format!("{label} block is empty")));
    }
    Ok(Block { label, der })
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
        assert_eq!(blocks[0].label, CERTIFICATE);
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
        assert!(parse_blocks("-----BEGIN A-----\nAAAA\n-----END B-----\n").is_err());
        assert!(parse_blocks("-----BEGIN A-----\n!!!!\n-----END A-----\n").is_err());
        assert!(certs_der_from_pem(&encode(PRIVATE_KEY, b"k")).is_err());
        let sec1 = encode("EC PRIVATE KEY", b"k");
        let msg = private_key_der_from_pem(&sec1).unwrap_err().to_string();
        assert!(msg.contains("PKCS#8"), "{msg}");
    }
}
