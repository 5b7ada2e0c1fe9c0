//! Thin, error-mapped wrappers around x509-parser.

use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::{Error, Result};

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Parse(format!("certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Parse(format!(
            "certificate: {} trailing bytes",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Parses one DER PKCS#10 request, refusing trailing bytes. Does not check its signature.
pub(crate) fn parse_csr(der: &[u8]) -> Result<X509CertificationRequest<'_>> {
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| Error::Parse(format!("certificate request: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Parse(format!(
            "certificate request: {} trailing bytes",
            rest.len()
        )));
    }
    Ok(csr)
}

/// Parses one DER SubjectPublicKeyInfo, refusing trailing bytes.
pub(crate) fn parse_spki(der: &[u8]) -> Result<SubjectPublicKeyInfo<'_>> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
        .map_err(|e| Error::Parse(format!("public key: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Parse(format!(
            "public key: {} trailing bytes",
            rest.len()
        )));
    }
    Ok(spki)
}

/// The subject common name of a parsed certificate, if it has exactly one readable CN.
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> Result<Option<String>> {
    let mut names = cert.subject().iter_common_name();
    let Some(first) = names.next() else {
        return Ok(None);
    };
    if names.next().is_some() {
        return Err(Error::Invalid(
            "certificate subject has more than one common name".into(),
        ));
    }
    let cn = first
        .as_str()
        .map_err(|e| Error::Parse(format!("subject common name: {e}")))?;
    Ok(Some(cn.to_owned()))
}

/// The subject common name (CN) of a DER certificate; an error if it has none.
///
/// An agent's id is its certificate's CN, so callers use this to learn who a peer is.
pub fn common_name_from_cert_der(cert_der: &[u8]) -> Result<String> {
    common_name(&parse_cert(cert_der)?)?
        .ok_or_else(|| Error::Invalid("certificate subject has no common name (CN)".into()))
}

/// The DER SubjectPublicKeyInfo of a DER certificate, byte for byte as encoded there (so its
/// pin equals [`crate::pin_from_cert_der`]).
pub fn spki_der_from_cert_der(cert_der: &[u8]) -> Result<Vec<u8>> {
    Ok(parse_cert(cert_der)?
        .tbs_certificate
        .subject_pki
        .raw
        .to_vec())
}

/// Whether a parsed SubjectPublicKeyInfo is an ECDSA P-256 key.
pub(crate) fn is_p256(spki: &SubjectPublicKeyInfo<'_>) -> bool {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == OID_EC_P256)
}

/// The uncompressed EC point of a P-256 SubjectPublicKeyInfo (what ring verifies with);
/// an error for any other key type.
pub fn ec_p256_point_from_spki(spki_der: &[u8]) -> Result<Vec<u8>> {
    let spki = parse_spki(spki_der)?;
    if !is_p256(&spki) {
        return Err(Error::Invalid("public key is not ECDSA P-256".into()));
    }
    if spki.subject_public_key.unused_bits != 0 {
        return Err(Error::Parse(
            "public key: BIT STRING has unused bits".into(),
        ));
    }
    Ok(spki.subject_public_key.data.to_vec())
}
