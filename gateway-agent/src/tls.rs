//! TLS towards the hub: the mesh CA as the only root, the agent's client certificate, and a
//! verifier that holds the TLS peer to `outbound.server_pins` — or, for a TLS-terminating front
//! door such as nginx, to `outbound.front_door_pins` (or the CA when those are unset).
//!
//! A peer whose pin is in `server_pins` is the hub itself: its chain is checked first (CA,
//! validity, host name) by rustls' own `WebPkiServerVerifier`, then the pin. Any other peer is
//! a front door ([`Route::FrontDoor`]): it must match `front_door_pins` when they are set, else
//! chain to the CA; the hub behind it must then sign `welcome` with a key in `server_pins`
//! (`crate::session::proof`). A refused peer fails the handshake and is recorded in a
//! [`PinObserver`] so the dialer can log both the presented and the expected pins loudly: it is
//! a hard failure, never a fallback.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

use crate::config::OutboundConfig;

/// Why the TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// `CA certificate`, `client certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{what} {}: {detail}", path.display())]
    Pem {
        /// `CA certificate`, `client certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the material (for example a key that does not match the certificate).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The chain verifier could not be built from the CA.
    #[error("mesh CA: {0}")]
    Verifier(String),
}

/// The presented hub pin of the last handshake refused for its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinMismatch {
    /// The pin the hub presented.
    pub presented: String,
    /// The configured `outbound.server_pins`.
    pub expected: Vec<String>,
}

/// Where the verifier records pin mismatches for the dialer to report.
#[derive(Debug, Clone, Default)]
pub struct PinObserver(Arc<Mutex<Option<PinMismatch>>>);

impl PinObserver {
    /// Takes the mismatch recorded since the last call, if any.
    pub fn take(&self) -> Option<PinMismatch> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn record(&self, mismatch: PinMismatch) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(mismatch);
    }
}

/// A ready client config and the observer of its pin verifier.
#[derive(Debug, Clone)]
pub struct HubTls {
    /// The rustls client config (ring provider, client certificate, pinning verifier).
    pub config: Arc<ClientConfig>,
    /// Pin mismatches seen by this config's verifier.
    pub pins: PinObserver,
    /// The key of the client certificate, for answering a hub `challenge`.
    pub proof_key: Arc<crate::session::ProofKey>,
}

/// How the TLS peer was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The peer's pin is in `server_pins`: TLS ends at the hub.
    Direct,
    /// The peer is a front door (its pin in `front_door_pins`, or chained to the CA): the hub
    /// behind it must sign `welcome`.
    FrontDoor,
}

impl Route {
    /// The route of a connection whose TLS peer presented `pin`.
    pub fn of(pin: Option<&str>, server_pins: &[String]) -> Route {
        match pin {
            Some(p) if server_pins.iter().any(|s| s == p) => Route::Direct,
            _ => Route::FrontDoor,
        }
    }
}

/// Builds the client TLS config from `[outbound]`.
pub fn client_config(outbound: &OutboundConfig) -> Result<HubTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = root_store(&outbound.ca)?;
    let pins = PinObserver::default();
    let mut verifier = PinningVerifier::new(
        roots,
        outbound.server_pins.clone(),
        provider.clone(),
        pins.clone(),
    )?;
    verifier.front_door = Some(outbound.front_door_pins.clone());
    let certs = load_certs("client certificate", &outbound.cert)?;
    let key = load_key(&outbound.key)?;
    let key_pem = read("private key", &outbound.key)?;
    let proof_key = crate::session::ProofKey::from_pem(&String::from_utf8_lossy(&key_pem))
        .map_err(|detail| TlsError::Pem {
            what: "private key",
            path: outbound.key.clone(),
            detail,
        })?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)?;
    Ok(HubTls {
        config: Arc::new(config),
        pins,
        proof_key: Arc::new(proof_key),
    })
}

/// A root store holding every certificate of the CA file.
pub fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA certificate", path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "CA certificate",
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// All `CERTIFICATE` blocks of a PEM file; at least one.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let pem_err = |detail: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE block found".to_owned()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8 or SEC1). A key rustls could use but the agent could
/// not sign results with (PKCS#1 RSA, another curve) is refused here, so the agent never
/// connects with a key whose results would go out unsigned.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    let pem_err = |detail: String| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        detail,
    };
    let text = String::from_utf8_lossy(&pem);
    let key = mesh_certs::private_key_from_pem(&text).map_err(|e| pem_err(e.to_string()))?;
    crate::signing::signer_from_pem(&text)
        .map_err(|e| pem_err(format!("{e} (result signing needs an ECDSA P-256 key)")))?;
    Ok(key)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Chain verification by webpki, then the end-entity pin must be one of `pins`; with a
/// `front_door` (the hub dialer's), another peer is accepted as a front door.
#[derive(Debug)]
pub struct PinningVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<String>,
    observer: PinObserver,
    /// `None`: only `pins` are accepted (enrolment). `Some(pins)`: a peer not in `pins` is a
    /// front door that must match these, or chain to the CA when empty.
    pub front_door: Option<Vec<String>>,
}

impl PinningVerifier {
    /// A verifier trusting `roots` and requiring one of `pins`.
    pub fn new(
        roots: RootCertStore,
        pins: Vec<String>,
        provider: Arc<CryptoProvider>,
        observer: PinObserver,
    ) -> Result<Self, TlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(PinningVerifier {
            inner,
            pins,
            observer,
            front_door: None,
        })
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let pin = mesh_certs::pin_from_cert_der(end_entity.as_ref())
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let chain = || {
            self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )
        };
        let front_door: &[String] = match &self.front_door {
            // The hub itself, or a front door that chains to the CA: the chain decides.
            _ if self.pins.contains(&pin) => return chain(),
            Some(front) if front.is_empty() => return chain(),
            // A pinned front door (its key is trusted as such; it need not chain to `ca`).
            Some(front) if front.contains(&pin) => return Ok(ServerCertVerified::assertion()),
            Some(front) => front,
            None => {
                // Refused either way: still report a broken chain as such (webpki's error).
                chain()?;
                &[]
            }
        };
        let mut expected = self.pins.clone();
        expected.extend(front_door.iter().cloned());
        let message = if front_door.is_empty() {
            format!(
                "hub pin {pin} is not in server_pins [{}]",
                self.pins.join(", ")
            )
        } else {
            format!(
                "hub pin {pin} is not in server_pins [{}] nor front_door_pins [{}]",
                self.pins.join(", "),
                front_door.join(", ")
            )
        };
        self.observer.record(PinMismatch {
            presented: pin,
            expected,
        });
        Err(Error::General(message))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
