//! Certificate signing requests, for enrolment: the agent keeps its key, the CA signs its CSR.

use rcgen::{CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, KeyPair};

use crate::ca::{leaf_params, subject};
use crate::pem::{self, CERTIFICATE_REQUEST, NEW_CERTIFICATE_REQUEST};
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

impl Ca {
    /// Issues an agent certificate for the key in `csr_pem`.
    ///
    /// The CSR's signature must verify (proof the requester holds the key). Everything else in
    /// it is ignored: the certificate gets CN = `agent_id`, EKU clientAuth and `validity`, as if
    /// issued by [`Ca::issue_agent`]. The returned `key_pem` is empty.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent_id: &str,
        validity: Validity,
    ) -> Result<Issued> {
        validate_agent_id(agent_id)?;
        let block = pem::first_block(csr_pem)?;
        if block.label != CERTIFICATE_REQUEST && block.label != NEW_CERTIFICATE_REQUEST {
            return Err(Error::Pem(format!(
                "expected a {CERTIFICATE_REQUEST} block, found {}",
                block.label
            )));
        }
        let requested_pin = {
            let csr = x509::parse_csr(&block.der)?;
            pin_from_spki_der(csr.certification_request_info.subject_pki.raw)
        };
        // Verifies the signature; also refuses CSRs asking for extensions rcgen cannot express.
        let request = CertificateSigningRequestParams::from_der(&block.der.as_slice().into())
            .map_err(|e| Error::Invalid(format!("certificate request rejected: {e}")))?;
        let params = leaf_params(agent_id, validity, ExtendedKeyUsagePurpose::ClientAuth);
        let issued = self.sign(params, &request.public_key, validity)?;
        // rcgen re-encodes the key from the CSR's signature algorithm; make sure that round
        // trip kept the very key the requester signed with (it would not for, say, P-384 keys
        // signed with SHA-256).
        if issued.pin != requested_pin {
            return Err(Error::Invalid(
                "unsupported key type in certificate request (use ECDSA P-256 or Ed25519)".into(),
            ));
        }
        Ok(issued)
    }
}
