//! Checking a renewed certificate and putting it in place without ever leaving a key and a
//! certificate that do not belong together.
//!
//! Installing writes `KEY.new` and `CERT.new` (temp files in the same directories, the key
//! 0600, the certificate with the mode the old one had, fsynced), then renames `CERT.new` over the certificate and `KEY.new` over the key, fsyncing
//! the directories. A crash can interrupt that in two places, and [`recover`] (run at start and
//! before every reconnect) finishes or undoes it:
//! - both `.new` files there, nothing renamed: the pair is complete and matching, so it is
//!   installed (the hub already enrolled its pin); a pair that does not match is discarded;
//! - the certificate renamed, `KEY.new` still there: it belongs to the certificate in place,
//!   so it is renamed too.
//!
//! The old pair stays valid on the hub until a session authenticates with the new one, so
//! either outcome leaves a working identity.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tracing::warn;

use super::{RenewError, RenewSettings};
use crate::signing::key_matches_cert;

/// A renewed identity now in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Pin of the new certificate.
    pub pin: String,
    /// Pin of the certificate it replaced.
    pub previous_pin: Option<String>,
    /// End of the new certificate's validity, RFC 3339.
    pub not_after: String,
}

/// Checks `cert_pem` against the request and the mesh CA, then installs it with `key_pem`.
pub(super) fn accept(
    settings: &RenewSettings,
    key_pem: &str,
    csr_pin: &str,
    cert_pem: &str,
    ca_pem: &str,
    announced_pin: &str,
) -> Result<Installed, RenewError> {
    let refused = |m: String| RenewError::Refused(m);
    let info = mesh_certs::inspect_pem(cert_pem).map_err(|e| refused(e.to_string()))?;
    if info.common_name.as_deref() != Some(settings.agent_id.as_str()) {
        return Err(refused(format!(
            "its CN is {:?}, not the agent id {:?}",
            info.common_name.unwrap_or_default(),
            settings.agent_id
        )));
    }
    if info.pin != csr_pin {
        return Err(refused(format!(
            "its pin {} is not the pin of the key this agent asked for ({csr_pin})",
            info.pin
        )));
    }
    if announced_pin != info.pin {
        warn!(announced = %announced_pin, actual = %info.pin, "the hub announced another pin than the certificate's");
    }
    if info.status != mesh_certs::CertStatus::Valid {
        return Err(refused(format!("it is {}", info.status)));
    }
    verify_chain(&settings.ca, cert_pem).map_err(refused)?;
    if !key_matches_cert(key_pem, cert_pem) {
        return Err(refused("it does not match the generated key".to_owned()));
    }
    let ours = std::fs::read_to_string(&settings.ca).unwrap_or_default();
    if ours.trim() != ca_pem.trim() {
        // The trust anchor only changes by the operator's hand, never over the wire.
        warn!(ca = %settings.ca.display(), "the hub sent a different CA certificate; keeping outbound.ca");
    }
    let previous_pin = std::fs::read_to_string(&settings.cert)
        .ok()
        .and_then(|pem| mesh_certs::pin_from_pem(&pem).ok());
    install_pair(&settings.key, &settings.cert, key_pem, cert_pem)
        .map_err(|e| RenewError::Install(e.to_string()))?;
    Ok(Installed {
        pin: info.pin,
        previous_pin,
        not_after: info.not_after,
    })
}

/// The certificate chains to the CA in `ca_path` and is fit for client authentication.
fn verify_chain(ca_path: &Path, cert_pem: &str) -> Result<(), String> {
    let roots = crate::tls::root_store(ca_path).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let der = mesh_certs::certs_der_from_pem(cert_pem).map_err(|e| e.to_string())?;
    let (leaf, rest) = der
        .split_first()
        .ok_or_else(|| "no certificate".to_owned())?;
    let intermediates: Vec<CertificateDer<'_>> = rest
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    verifier
        .verify_client_cert(
            &CertificateDer::from(leaf.as_slice()),
            &intermediates,
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| format!("it does not verify against outbound.ca: {e}"))
}

/// `PATH.new`.
fn staged(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Installs `key_pem` at `key` and `cert_pem` at `cert` (see the module docs for the order).
pub fn install_pair(key: &Path, cert: &Path, key_pem: &str, cert_pem: &str) -> std::io::Result<()> {
    let (key_new, cert_new) = (staged(key), staged(cert));
    // The certificate is public: keep whatever the operator chose for the old one.
    let cert_mode = std::fs::metadata(cert).map_or(0o644, |m| m.permissions().mode() & 0o777);
    let staged_both = write_synced(&key_new, key_pem, 0o600)
        .and_then(|()| write_synced(&cert_new, cert_pem, cert_mode))
        .and_then(|()| sync_parent(key))
        .and_then(|()| sync_parent(cert));
    if let Err(e) = staged_both {
        let _ = std::fs::remove_file(&key_new);
        let _ = std::fs::remove_file(&cert_new);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&cert_new, cert).and_then(|()| sync_parent(cert)) {
        let _ = std::fs::remove_file(&key_new);
        let _ = std::fs::remove_file(&cert_new);
        return Err(e);
    }
    // From here a failure leaves KEY.new beside the new certificate; `recover` completes it.
    std::fs::rename(&key_new, key)?;
    sync_parent(key)
}

/// Whether the key and certificate can be replaced (a temp file can be created beside each):
/// checked before asking the hub, which enrols the new pin as soon as it signs.
pub(super) fn check_writable(key: &Path, cert: &Path) -> std::io::Result<()> {
    for path in [key, cert] {
        let probe = staged(path);
        if probe.exists() {
            continue; // left for `recover`; the directory was writable then
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", probe.display())))?;
        std::fs::remove_file(&probe)?;
    }
    Ok(())
}

/// Finishes or undoes an installation a crash interrupted; says what it did, if anything.
pub fn recover(key: &Path, cert: &Path) -> Option<String> {
    let (key_new, cert_new) = (staged(key), staged(cert));
    let Ok(key_new_pem) = std::fs::read_to_string(&key_new) else {
        if std::fs::remove_file(&cert_new).is_ok() {
            return Some(format!("removed a stale {}", cert_new.display()));
        }
        return None;
    };
    let cert_pem = std::fs::read_to_string(cert).unwrap_or_default();
    let result = if key_matches_cert(&key_new_pem, &cert_pem) {
        std::fs::rename(&key_new, key)
            .and_then(|()| sync_parent(key))
            .map(|()| {
                format!(
                    "installed {} to match the renewed certificate",
                    key_new.display()
                )
            })
    } else {
        let staged_cert = std::fs::read_to_string(&cert_new).unwrap_or_default();
        if key_matches_cert(&key_new_pem, &staged_cert) {
            install_pair(key, cert, &key_new_pem, &staged_cert)
                .map(|()| "completed an interrupted certificate renewal".to_owned())
        } else {
            let _ = std::fs::remove_file(&key_new);
            let _ = std::fs::remove_file(&cert_new);
            Ok("discarded an incomplete certificate renewal".to_owned())
        }
    };
    Some(result.unwrap_or_else(|e| format!("could not finish an interrupted renewal: {e}")))
}

fn write_synced(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    // A leftover from an earlier attempt may have other permissions; start afresh.
    let _ = std::fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mesh_certs::{Ca, Validity};

    struct Setup {
        _dir: tempfile::TempDir,
        settings: RenewSettings,
        ca: Ca,
        old_pin: String,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test CA").unwrap();
        let old = ca.issue_agent("edge-01", Validity::days(1)).unwrap();
        old.save(dir.path()).unwrap();
        let settings = RenewSettings {
            agent_id: "edge-01".into(),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca: dir.path().join("ca.pem"),
            renew_before: std::time::Duration::from_secs(86_400),
            check_every: std::time::Duration::from_secs(3600),
            answer_timeout: std::time::Duration::from_secs(30),
        };
        Setup {
            _dir: dir,
            settings,
            ca,
            old_pin: old.pin,
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn a_matching_certificate_is_installed_and_others_are_refused() {
        let s = setup();
        let (csr, key_pem) = mesh_certs::generate_csr("edge-01").unwrap();
        let csr_pin = mesh_certs::pin_from_pem(&csr).unwrap();
        let good =
            s.ca.sign_agent_csr(&csr, "edge-01", Validity::days(30))
                .unwrap();
        let other_id =
            s.ca.sign_agent_csr(&csr, "edge-02", Validity::days(30))
                .unwrap();
        let foreign = Ca::generate("other CA").unwrap();
        let foreign = foreign
            .sign_agent_csr(&csr, "edge-01", Validity::days(30))
            .unwrap();
        let other_key = s.ca.issue_agent("edge-01", Validity::days(30)).unwrap();
        let ca = read(&s.settings.ca);
        for (bad, why) in [
            (&other_id, "CN"),
            (&foreign, "outbound.ca"),
            (&other_key, "pin"),
        ] {
            let err = accept(
                &s.settings,
                &key_pem,
                &csr_pin,
                &bad.cert_pem,
                &ca,
                &bad.pin,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        let installed = accept(
            &s.settings,
            &key_pem,
            &csr_pin,
            &good.cert_pem,
            &ca,
            &good.pin,
        )
        .unwrap();
        assert_eq!(installed.pin, good.pin);
        assert_eq!(installed.previous_pin.as_deref(), Some(s.old_pin.as_str()));
        assert_eq!(read(&s.settings.cert), good.cert_pem);
        assert_eq!(read(&s.settings.key), key_pem);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.settings.key), 0o600);
        assert!(!staged(&s.settings.key).exists() && !staged(&s.settings.cert).exists());
        assert_eq!(recover(&s.settings.key, &s.settings.cert), None);
    }

    #[test]
    fn recovery_finishes_or_undoes_an_interrupted_install() {
        let s = setup();
        let (key, cert) = (&s.settings.key, &s.settings.cert);
        let new = s.ca.issue_agent("edge-01", Validity::days(30)).unwrap();
        // Crashed after the certificate was renamed: the key follows.
        std::fs::write(cert, &new.cert_pem).unwrap();
        std::fs::write(staged(key), &new.key_pem).unwrap();
        assert!(recover(key, cert).unwrap().contains("installed"));
        assert!(key_matches_cert(&read(key), &read(cert)));
        // Crashed before any rename: the complete staged pair is installed.
        let newer = s.ca.issue_agent("edge-01", Validity::days(30)).unwrap();
        std::fs::write(staged(key), &newer.key_pem).unwrap();
        std::fs::write(staged(cert), &newer.cert_pem).unwrap();
        assert!(recover(key, cert).unwrap().contains("completed"));
        assert_eq!(read(cert), newer.cert_pem);
        assert!(key_matches_cert(&read(key), &read(cert)));
        // A torn staged pair is discarded; the installed pair stays.
        std::fs::write(staged(key), "garbage").unwrap();
        std::fs::write(staged(cert), &new.cert_pem).unwrap();
        assert!(recover(key, cert).unwrap().contains("discarded"));
        assert_eq!(read(cert), newer.cert_pem);
        assert!(!staged(key).exists() && !staged(cert).exists());
    }
}
