//! The hub's rustls server: a client certificate chaining to the mesh CA is mandatory.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore, ServerConfig};

/// Why the hub's TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

fn pem_err(path: &Path, message: impl ToString) -> TlsSetupError {
    TlsSetupError::Pem {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

/// The CA store agents must chain to.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| pem_err(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// Builds the hub's server config (mandatory client auth against `client_ca`) and returns the
/// verifier too, for certificates a trusted proxy forwards.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<(Arc<ServerConfig>, Arc<dyn ClientCertVerifier>), TlsSetupError> {
    let (config, verifier, _) = reloadable_server_config(cert, key, client_ca)?;
    Ok((config, verifier))
}

/// The server config, the client verifier, and the handle that swaps the certificate.
pub type ReloadableServer = (
    Arc<ServerConfig>,
    Arc<dyn ClientCertVerifier>,
    Arc<SwappableCert>,
);

/// Like [`server_config`], with the server certificate behind a [`SwappableCert`] a config
/// reload replaces: new handshakes present the new certificate, live sessions are untouched.
pub fn reloadable_server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<ReloadableServer, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = load_roots(client_ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let resolver = Arc::new(SwappableCert::new(certified_key(cert, key)?));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Session tickets would let a peer resume without presenting its certificate again to
    // this process's verifier; agents reconnect rarely, so full handshakes cost little.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok((Arc::new(config), verifier, resolver))
}

/// Loads a certificate chain and its key and checks that they belong together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(load_certs(cert)?, load_key(key)?, &provider)
        .map_err(|e| TlsSetupError::Rustls(format!("{}: {e}", cert.display())))?;
    Ok(Arc::new(certified))
}

/// The hub's server certificate, replaceable while the acceptor keeps running.
#[derive(Debug)]
pub struct SwappableCert {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl SwappableCert {
    /// Serves `key` until the next [`SwappableCert::replace`].
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        SwappableCert {
            current: std::sync::RwLock::new(key),
        }
    }

    /// Serves `key` to every handshake from now on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Maps a failed TLS accept to a stable reason code for logs and metrics.
pub fn classify_handshake_error(err: &std::io::Error) -> &'static str {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed_during_handshake",
            std::io::ErrorKind::InvalidData => "not_tls",
            _ => "tls_io_error",
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_cert",
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_key_usage"
            }
            _ => "bad_certificate",
        },
        rustls::Error::InvalidMessage(_) => "not_tls",
        rustls::Error::AlertReceived(_) => "peer_alert",
        _ => "tls_error",
    }
}
