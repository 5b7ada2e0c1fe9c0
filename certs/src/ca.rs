//! The mesh CA: generating, loading and saving it, and issuing leaf certificates.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::files::{create_dir, read_text, write_private, write_public};
use rustls_pki_types::pem::SectionKind;

use crate::pem::{self, CERTIFICATE};
use crate::{
    pin_from_cert_der, validate_agent_id, x509, Error, Issued, Result, Validity, CA_CERT_FILE,
    CA_KEY_FILE,
};

/// Lifetime of a new CA, in days (about ten years).
pub const CA_VALIDITY_DAYS: i64 = 3650;

/// In-memory CA: its certificate and private key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    not_after: OffsetDateTime,
}

impl Ca {
    /// A new self-signed CA: ECDSA P-256, valid ten years, `CA:true` with path length 0
    /// (it signs leaves only), key usages keyCertSign and cRLSign.
    pub fn generate(common_name: &str) -> Result<Ca> {
        if common_name.trim().is_empty() {
            return Err(Error::Invalid("CA common name must not be empty".into()));
        }
        let key = KeyPair::generate().map_err(|e| Error::generate("CA key", e))?;
        let validity = Validity::days(CA_VALIDITY_DAYS);
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(fresh_serial(&key.subject_public_key_info()));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::generate("CA certificate", e))?;
        Ca::from_parts(cert.der(), key)
    }

    /// Reads `DIR/ca.pem` and `DIR/ca-key.pem` (PKCS#8) and checks that they belong together.
    pub fn load(dir: &Path) -> Result<Ca> {
        Ca::load_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))
    }

    /// Reads a CA certificate and its PKCS#8 key from two files and checks they belong together.
    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let cert_der = pem::first_of(&read_text(cert_path)?, SectionKind::Certificate)
            .map_err(|e| e.in_file(cert_path))?;
        let key = crate::private_key_der_from_pem(&read_text(key_path)?)
            .and_then(|der| {
                KeyPair::try_from(der.as_slice())
                    .map_err(|e| Error::Invalid(format!("unusable private key: {e}")))
            })
            .map_err(|e| e.in_file(key_path))?;
        Ca::from_parts(&cert_der, key).map_err(|e| e.in_file(cert_path))
    }

    /// Writes `DIR/ca.pem` and `DIR/ca-key.pem` (mode 0600), creating `DIR` if needed.
    ///
    /// Overwrites existing files; [`crate::init_ca_dir`] is the careful variant.
    pub fn save(&self, dir: &Path) -> Result<()> {
        create_dir(dir)?;
        write_public(&dir.join(CA_CERT_FILE), &self.cert_pem)?;
        write_private(&dir.join(CA_KEY_FILE), &self.key.serialize_pem())
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the CA certificate expires; leaves may not outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// An agent (client) certificate with a new P-256 key: CN = `agent_id`, EKU clientAuth,
    /// key usage digitalSignature, no SANs.
    pub fn issue_agent(&self, agent_id: &str, validity: Validity) -> Result<Issued> {
        validate_agent_id(agent_id)?;
        let params = leaf_params(agent_id, validity, ExtendedKeyUsagePurpose::ClientAuth);
        self.issue_with_new_key(params, validity)
    }

    /// A server certificate with a new P-256 key: CN = `name`, EKU serverAuth, and SANs for
    /// `name` followed by `sans` (strings that parse as an IP address become IP SANs, the rest
    /// DNS SANs; duplicates are dropped).
    pub fn issue_server(&self, name: &str, sans: &[String], validity: Validity) -> Result<Issued> {
        let mut params = leaf_params(name, validity, ExtendedKeyUsagePurpose::ServerAuth);
        params.subject_alt_names = san_list(name, sans)?;
        self.issue_with_new_key(params, validity)
    }

    /// Checks the pair and remembers what issuance needs.
    fn from_parts(cert_der: &[u8], key: KeyPair) -> Result<Ca> {
        let cert = x509::parse_cert(cert_der)?;
        if !cert.is_ca() {
            return Err(Error::Invalid(
                "not a CA certificate (basicConstraints CA:true missing)".into(),
            ));
        }
        if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(Error::Invalid(format!(
                "the private key in {CA_KEY_FILE} does not belong to this certificate"
            )));
        }
        Ok(Ca {
            cert_pem: pem::encode(CERTIFICATE, cert_der),
            not_after: cert.validity().not_after.to_datetime(),
            key,
        })
    }

    fn issue_with_new_key(&self, params: CertificateParams, validity: Validity) -> Result<Issued> {
        let key = KeyPair::generate().map_err(|e| Error::generate("leaf key", e))?;
        let mut issued = self.sign(params, &key, validity)?;
        issued.key_pem = key.serialize_pem();
        Ok(issued)
    }

    /// Signs `params` for `public_key`; the returned [`Issued`] has an empty `key_pem`.
    pub(crate) fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        validity: Validity,
    ) -> Result<Issued> {
        validity.check(self.not_after)?;
        params.serial_number = Some(fresh_serial(&public_key.subject_public_key_info()));
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| Error::Invalid(format!("CA certificate unusable as issuer: {e}")))?;
        let cert = params
            .signed_by(public_key, &issuer)
            .map_err(|e| Error::generate("certificate", e))?;
        Ok(Issued {
            pin: pin_from_cert_der(cert.der())?,
            cert_pem: cert.pem(),
            key_pem: String::new(),
            ca_pem: self.cert_pem.clone(),
        })
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key", &"***")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A subject with just a common name.
pub(crate) fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The parameters every leaf shares: CN, validity, `CA:false`, digitalSignature, one EKU, and an
/// authority key identifier so verifiers can find the CA.
pub(crate) fn leaf_params(
    common_name: &str,
    validity: Validity,
    eku: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params
}

fn san_list(name: &str, sans: &[String]) -> Result<Vec<SanType>> {
    let mut out: Vec<SanType> = Vec::with_capacity(sans.len() + 1);
    for raw in std::iter::once(name).chain(sans.iter().map(String::as_str)) {
        let value = raw.trim();
        if value.is_empty() {
            return Err(Error::Invalid(
                "server name and SANs must not be empty".into(),
            ));
        }
        let san = match value.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                value
                    .try_into()
                    .map_err(|e| Error::Invalid(format!("bad DNS name {value:?}: {e}")))?,
            ),
        };
        if !out.contains(&san) {
            out.push(san);
        }
    }
    Ok(out)
}

/// A serial number unique per issuance (RFC 5280 wants it unique per CA).
///
/// rcgen's default derives the serial from the public key alone, so re-issuing for the same key
/// (CSR renewal) would repeat it; mixing in the time and a counter avoids that.
fn fresh_serial(spki: &[u8]) -> SerialNumber {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hash = Sha256::new();
    hash.update(spki);
    hash.update(
        OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_be_bytes(),
    );
    hash.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    hash.update(std::process::id().to_be_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.finalize()[..16]);
    // Positive, and never a leading zero octet that would shorten the encoding.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}
