//! Result signatures: every `result` frame carries an ECDSA P-256 signature by the agent's
//! certificate key over [`agentmesh_audit::result_digest`] of the frame as sent (see
//! `docs/audit.md`), so a result can later be proven to come from this agent's key.
//!
//! Results are signed once, when they are produced, and stored signed together with the pin
//! of the key and the message limit they were fitted to, so a result re-sent after a reconnect
//! goes out as stored. Just before a result is written to a session only that pin and limit are
//! compared with the current ones (no second digest or verification): a frame fitted to
//! another limit, never signed (an interrupted command, a signing failure) or signed with a key
//! that has since been renewed is fitted and signed again with the current key. The hub checks a signature against the key of the session's certificate, so
//! re-signing at delivery is what keeps results produced before a renewal verifiable after it.
//!
//! The [`Signer`] is a shared handle: the dialer reloads it together with the TLS material
//! (at every reconnect, and right after a renewal), so it always holds the key the next session
//! authenticates with. The key is read by the same PEM parser as the TLS loader and accepted
//! in the same forms (PKCS#8 and SEC1 `EC PRIVATE KEY`); a key that cannot sign (RSA, another
//! curve) is refused by the TLS loader too ([`crate::tls::load_key`]), so `check-config` fails
//! and no session is opened with it. Only a key that becomes unreadable between the TLS load
//! and this one leaves results unsigned, and the hub records them as such.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use agentmesh_audit::{result_digest, verify_result_signature, ResultSignature, ResultSigner};
use agentmesh_protocol::ResultFrame;
use tracing::warn;

use crate::config::OutboundConfig;

/// Why the signing key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key or certificate is unusable for signing results.
    #[error("{0}")]
    Unusable(String),
}

/// A loaded key and the certificate it belongs to.
struct Key {
    signer: ResultSigner,
    spki: Vec<u8>,
    pin: String,
}

impl Key {
    /// Loads a P-256 key (PKCS#8 or SEC1) and checks it belongs to the certificate.
    fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Key, SigningError> {
        let unusable = |what: String| SigningError::Unusable(what);
        let signer = signer_from_pem(key_pem)?;
        let cert = mesh_certs::certs_der_from_pem(cert_pem)
            .map_err(|e| unusable(format!("certificate: {e}")))?;
        let first = cert
            .first()
            .ok_or_else(|| unusable("certificate: no CERTIFICATE block".to_owned()))?;
        let spki = mesh_certs::spki_der_from_cert_der(first)
            .map_err(|e| unusable(format!("certificate: {e}")))?;
        let key = Key {
            pin: mesh_certs::pin_from_spki_der(&spki),
            signer,
            spki,
        };
        // A signature the certificate's key verifies proves the two belong together.
        let probe = "0".repeat(64);
        let signature = key
            .signer
            .sign_digest(&probe)
            .map_err(|e| unusable(e.to_string()))?;
        if !verify_result_signature(&key.spki, &probe, &signature) {
            return Err(unusable(
                "the private key does not belong to the certificate".to_owned(),
            ));
        }
        Ok(key)
    }
}

/// A result signer for the key in `key_pem`, in any form the TLS loader accepts that can sign
/// results (P-256 as PKCS#8 or SEC1); the error says why another key cannot.
pub fn signer_from_pem(key_pem: &str) -> Result<ResultSigner, SigningError> {
    let unusable = |e: &dyn std::fmt::Display| SigningError::Unusable(format!("private key: {e}"));
    let der = mesh_certs::p256_pkcs8_der_from_pem(key_pem).map_err(|e| unusable(&e))?;
    ResultSigner::from_pkcs8_der(&der).map_err(|e| unusable(&e))
}

/// Whether `key_pem` is the private key of `cert_pem` (P-256 keys only).
pub fn key_matches_cert(key_pem: &str, cert_pem: &str) -> bool {
    Key::from_pem(key_pem, cert_pem).is_ok()
}

/// What [`Signer::ensure_signed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    /// The frame already carried a valid signature by the current key.
    AlreadySigned,
    /// The frame was signed now.
    Signed(ResultSignature),
    /// No key is loaded, or signing failed: the frame goes out as it is.
    Unsigned,
}

impl Sealed {
    /// The signature made now, if one was.
    pub fn signature(&self) -> Option<&ResultSignature> {
        match self {
            Sealed::Signed(signature) => Some(signature),
            Sealed::AlreadySigned | Sealed::Unsigned => None,
        }
    }
}

/// The shared signing key; cheap to clone.
#[derive(Clone, Default)]
pub struct Signer {
    paths: Option<Arc<(PathBuf, PathBuf)>>,
    key: Arc<RwLock<Option<Arc<Key>>>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer that never signs (results go out unsigned).
    pub fn disabled() -> Signer {
        Signer::default()
    }

    /// A signer for `outbound.key` / `outbound.cert`, loaded now. A key that cannot sign is
    /// logged and leaves the signer empty; [`Signer::reload`] tries again.
    pub fn load(outbound: &OutboundConfig) -> Signer {
        let signer = Signer {
            paths: Some(Arc::new((outbound.key.clone(), outbound.cert.clone()))),
            key: Arc::default(),
        };
        if let Err(e) = signer.reload() {
            warn!(error = %e, "results will not be signed until the key can be loaded");
        }
        signer
    }

    /// A signer for the PEM files at `key` and `cert`, loaded now (tests of other modules).
    #[cfg(test)]
    pub(crate) fn from_files(key: &Path, cert: &Path) -> Signer {
        let signer = Signer {
            paths: Some(Arc::new((key.to_owned(), cert.to_owned()))),
            key: Arc::default(),
        };
        let _ = signer.reload();
        signer
    }

    /// Reads the key and certificate again; returns the pin of the loaded key. On failure the
    /// signer is emptied (an old key would sign results the hub cannot verify).
    pub fn reload(&self) -> Result<String, SigningError> {
        let Some(paths) = &self.paths else {
            return Err(SigningError::Unusable("signing is disabled".to_owned()));
        };
        let loaded = read(&paths.0).and_then(|key_pem| {
            let cert_pem = read(&paths.1)?;
            Key::from_pem(&key_pem, &cert_pem)
        });
        let mut slot = self.key.write().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok(key) => {
                let pin = key.pin.clone();
                *slot = Some(Arc::new(key));
                Ok(pin)
            }
            Err(e) => {
                *slot = None;
                Err(e)
            }
        }
    }

    /// The pin of the loaded key.
    pub fn pin(&self) -> Option<String> {
        self.current().map(|k| k.pin.clone())
    }

    /// Makes sure `result` carries a valid signature by the current key over its digest as it
    /// is now, signing it if not. Call it on the final frame, after any trimming.
    pub fn ensure_signed(&self, result: &mut ResultFrame) -> Sealed {
        let Some(key) = self.current() else {
            return Sealed::Unsigned;
        };
        let digest = result_digest(result);
        if let Some(existing) = &result.signature {
            if verify_result_signature(&key.spki, &digest, existing) {
                return Sealed::AlreadySigned;
            }
        }
        match key.signer.sign_digest(&digest) {
            Ok(signature) => {
                let sealed = ResultSignature::new(&key.spki, &digest, &signature);
                result.signature = Some(signature);
                Sealed::Signed(sealed)
            }
            Err(e) => {
                warn!(command.id = %result.command_id, error = %e, "cannot sign a result");
                result.signature = None;
                Sealed::Unsigned
            }
        }
    }

    fn current(&self) -> Option<Arc<Key>> {
        self.key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn read(path: &Path) -> Result<String, SigningError> {
    std::fs::read_to_string(path).map_err(|source| SigningError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::exec::outcome;
    use mesh_certs::{Ca, Validity};

    fn signer_for(dir: &Path, issued: &mesh_certs::Issued) -> Signer {
        issued.save(dir).unwrap();
        let signer = Signer {
            paths: Some(Arc::new((dir.join("key.pem"), dir.join("cert.pem")))),
            key: Arc::default(),
        };
        assert_eq!(signer.reload().unwrap(), issued.pin);
        signer
    }

    #[test]
    fn signs_once_and_re_signs_after_a_change_or_a_new_key() {
        let ca = Ca::generate("test CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let first = ca.issue_agent("edge-01", Validity::days(1)).unwrap();
        let signer = signer_for(dir.path(), &first);
        let mut r = outcome::ok_stdout("c-1", "hello".into());
        let Sealed::Signed(sig) = signer.ensure_signed(&mut r) else {
            panic!("not signed")
        };
        assert_eq!(sig.agent_pin, first.pin);
        assert_eq!(sig.result_sha256, result_digest(&r));
        sig.verify().unwrap();
        assert_eq!(signer.ensure_signed(&mut r), Sealed::AlreadySigned);
        // Trimmed after signing: the old signature no longer covers the frame.
        r.stdout.truncate(2);
        assert!(matches!(signer.ensure_signed(&mut r), Sealed::Signed(_)));
        // A renewed key re-signs what the old one signed.
        let second = ca.issue_agent("edge-01", Validity::days(1)).unwrap();
        second.save(dir.path()).unwrap();
        assert_eq!(signer.reload().unwrap(), second.pin);
        let Sealed::Signed(sig) = signer.ensure_signed(&mut r) else {
            panic!("not re-signed")
        };
        assert_eq!(sig.agent_pin, second.pin);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_and_nothing_is_signed() {
        let ca = Ca::generate("test CA").unwrap();
        let a = ca.issue_agent("edge-01", Validity::days(1)).unwrap();
        let b = ca.issue_agent("edge-01", Validity::days(1)).unwrap();
        assert!(key_matches_cert(&a.key_pem, &a.cert_pem));
        assert!(!key_matches_cert(&a.key_pem, &b.cert_pem));
        let dir = tempfile::tempdir().unwrap();
        let signer = signer_for(dir.path(), &a);
        std::fs::write(dir.path().join("cert.pem"), &b.cert_pem).unwrap();
        let err = signer.reload().unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
        let mut r = outcome::ok_stdout("c-1", String::new());
        assert_eq!(signer.ensure_signed(&mut r), Sealed::Unsigned);
        assert_eq!(r.signature, None);
        assert_eq!(Signer::disabled().ensure_signed(&mut r), Sealed::Unsigned);
    }
}
