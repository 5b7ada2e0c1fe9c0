//! Certificate signing requests, for enrolment: the agent keeps its key, the CA signs its CSR.

use rcgen::{CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, KeyPair};

use crate::ca::{leaf_params, subject};
use rustls_pki_types::pem::SectionKind;

use crate::pem::{self, CERTIFICATE_REQUEST};
use crate::{pin_from_spki_der, validate_agent_id, x509, Ca, Error, Issued, Result, Validity};

/// A new P-256 key and a CSR for it with subject CN = `agent_id`.
///
/// Returns `(csr_pem, key_pem)`; the key is PKCS#8 and must be stored with
/// [`crate::write_private`].
pub fn generate_csr(agent_id: &str) -> Result<(String, String)> {
    validate_agent_id(agent_id)?;
    let key = KeyPair::generate().map_err(|e| Error::generate("key", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(agent_id);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| Error::generate("certificate request", e))?;
    Ok((csr, key.serialize_pem()))
}

/// Checks an agent's CSR without signing anything: one `CERTIFICATE REQUEST` block, parsed,
/// its signature verified (proof the requester holds the key), and its key ECDSA P-256 (the
/// only kind an agent can sign results with). Returns the pin of that key.
///
/// [`Ca::sign_agent_csr`] runs the same checks; call this first where something (a join token)
/// must only be spent on a CSR that will then be signed.
pub fn check_agent_csr(csr_pem: &str) -> Result<String> {
    check(csr_pem).map(|c| c.pin)
}

/// A CSR that passed [`check_agent_csr`].
struct Checked {
    pin: String,
    request: CertificateSigningRequestParams,
}

fn check(csr_pem: &str) -> Result<Checked> {
    let block = pem::first_block(csr_pem)?;
    if block.kind != SectionKind::Csr {
        return Err(Error::Pem(format!(
            "expected a {CERTIFICATE_REQUEST} block, found {}",
            pem::label(block.kind)
        )));
    }
    let pin = {
        let csr = x509::parse_csr(&block.der)?;
        let spki = &csr.certification_request_info.subject_pki;
        if !x509::is_p256(spki) {
            return Err(Error::Invalid(
                "unsupported key type in certificate request (use ECDSA P-256)".into(),
            ));
        }
        pin_from_spki_der(spki.raw)
    };
    // Verifies the signature; also refuses CSRs asking for extensions rcgen cannot express.
    let request = CertificateSigningRequestParams::from_der(&block.der.as_slice().into())
        .map_err(|e| Error::Invalid(format!("certificate request rejected: {e}")))?;
    Ok(Checked { pin, request })
}

impl Ca {
    /// Issues an agent certificate for the key in `csr_pem`, which must pass
    /// [`check_agent_csr`].
    ///
    /// Everything else in the CSR is ignored: the certificate gets CN = `agent_id`, EKU
    /// clientAuth and `validity`, as if issued by [`Ca::issue_agent`]. The returned `key_pem`
    /// is empty.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent_id: &str,
        validity: Validity,
    ) -> Result<Issued> {
        validate_agent_id(agent_id)?;
        let checked = check(csr_pem)?;
        let params = leaf_params(agent_id, validity, ExtendedKeyUsagePurpose::ClientAuth);
        let issued = self.sign(params, &checked.request.public_key, validity)?;
        // rcgen re-encodes the key from the CSR's signature algorithm; make sure that round
        // trip kept the very key the requester signed with.
        if issued.pin != checked.pin {
            return Err(Error::Invalid(
                "unsupported key type in certificate request (use ECDSA P-256)".into(),
            ));
        }
        Ok(issued)
    }
}
