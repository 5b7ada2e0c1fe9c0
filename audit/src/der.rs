//! Just enough DER to find a certificate's SubjectPublicKeyInfo and an SPKI's EC point.
//!
//! mesh-certs parses certificates with x509-parser but does not export the SPKI bytes, so this
//! walks the few fixed fields instead of adding a dependency. Every read is bounds-checked.

use crate::AuditError;

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const VERSION_TAG: u8 = 0xa0;

/// id-ecPublicKey (1.2.840.10045.2.1) followed by prime256v1 (1.2.840.10045.3.1.7).
const EC_P256_ALGORITHM: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];

/// One TLV: its tag, its content, and the whole encoding.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    raw: &'a [u8],
}

fn bad(what: &str) -> AuditError {
    AuditError::Crypto(format!("malformed DER: {what}"))
}

/// Reads one TLV from the front of `input`; returns it and the rest.
fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), AuditError> {
    let (&tag, rest) = input.split_first().ok_or_else(|| bad("truncated tag"))?;
    let (&first, mut rest) = rest.split_first().ok_or_else(|| bad("truncated length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad("unsupported length"));
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(bad("length beyond input"));
    }
    let header = input.len() - rest.len();
    let tlv = Tlv {
        tag,
        content: &rest[..len],
        raw: &input[..header + len],
    };
    Ok((tlv, &rest[len..]))
}

/// Reads one TLV that must have `tag`.
fn expect_tag<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(Tlv<'a>, &'a [u8]), AuditError> {
    let (tlv, rest) = read_tlv(input)?;
    if tlv.tag != tag {
        return Err(bad(&format!("{what}: unexpected tag {:#04x}", tlv.tag)));
    }
    Ok((tlv, rest))
}

/// The DER SubjectPublicKeyInfo of a DER X.509 certificate, byte for byte as encoded there (so
/// its pin equals `mesh_certs::pin_from_cert_der`).
pub fn spki_der_from_cert_der(cert_der: &[u8]) -> Result<Vec<u8>, AuditError> {
    let (cert, _) = expect_tag(cert_der, SEQUENCE, "certificate")?;
    let (tbs, _) = expect_tag(cert.content, SEQUENCE, "tbsCertificate")?;
    let mut fields = tbs.content;
    let (first, rest) = read_tlv(fields)?;
    if first.tag == VERSION_TAG {
        fields = rest;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        fields = read_tlv(fields)?.1;
    }
    let (spki, _) = expect_tag(fields, SEQUENCE, "subjectPublicKeyInfo")?;
    Ok(spki.raw.to_vec())
}

/// The uncompressed EC point inside a P-256 SubjectPublicKeyInfo, as ring wants it.
pub(crate) fn ec_point_from_spki(spki_der: &[u8]) -> Result<&[u8], AuditError> {
    let (spki, trailing) = expect_tag(spki_der, SEQUENCE, "subjectPublicKeyInfo")?;
    if !trailing.is_empty() {
        return Err(bad("trailing bytes after subjectPublicKeyInfo"));
    }
    let (algorithm, rest) = expect_tag(spki.content, SEQUENCE, "algorithm")?;
    if algorithm.content != EC_P256_ALGORITHM {
        return Err(AuditError::Crypto("public key is not ECDSA P-256".into()));
    }
    let (bits, _) = expect_tag(rest, BIT_STRING, "subjectPublicKey")?;
    match bits.content.split_first() {
        Some((0, point)) => Ok(point),
        _ => Err(bad("subjectPublicKey has unused bits")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_garbage_without_panicking() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x85\x00",
            b"\x30\x05\x02\x01",
            b"\x04\x00",
        ] {
            assert!(spki_der_from_cert_der(input).is_err());
            assert!(ec_point_from_spki(input).is_err());
        }
    }

    #[test]
    fn long_lengths_are_read() {
        let mut der = vec![0x04, 0x82, 0x01, 0x00];
        der.extend(std::iter::repeat_n(7u8, 256));
        let (tlv, rest) = read_tlv(&der).unwrap();
        assert_eq!(tlv.content.len(), 256);
        assert!(rest.is_empty());
    }
}
