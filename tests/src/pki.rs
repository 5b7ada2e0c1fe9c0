//! Per-test PKI: a mesh CA, the hub's server certificate and agent certificates on disk.

use std::path::{Path, PathBuf};

use mesh_certs::{Ca, Issued, Validity};
use tempfile::TempDir;

/// A CA and the files tests point configs at.
pub struct Pki {
    /// Root of everything this test writes.
    pub dir: TempDir,
    /// The mesh CA.
    pub ca: Ca,
    /// The hub's certificate (CN localhost, SANs 127.0.0.1 and ::1).
    pub server: Issued,
}

impl Pki {
    /// A fresh CA and server certificate under a new temp dir.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test mesh CA").unwrap();
        ca.save(&dir.path().join("ca")).unwrap();
        let server = ca
            .issue_server(
                "localhost",
                &["127.0.0.1".to_owned(), "::1".to_owned()],
                Validity::days(2),
            )
            .unwrap();
        server.save(&dir.path().join("server")).unwrap();
        Pki { dir, ca, server }
    }

    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issues an agent certificate into `<dir>/agents/<id>/` and returns it.
    pub fn agent(&self, id: &str) -> (Issued, PathBuf) {
        let issued = self.ca.issue_agent(id, Validity::days(2)).unwrap();
        let out = self.path().join("agents").join(id);
        issued.save(&out).unwrap();
        (issued, out)
    }

    /// An agent certificate from a different, unrelated CA.
    pub fn foreign_agent(&self, id: &str) -> (Issued, PathBuf) {
        let other = Ca::generate("someone else's CA").unwrap();
        let issued = other.issue_agent(id, Validity::days(2)).unwrap();
        let out = self.path().join("foreign").join(id);
        issued.save(&out).unwrap();
        (issued, out)
    }
}

impl Drop for Pki {
    /// A failing test keeps its directory (configs, audit.log, backend.db, process logs,
    /// nginx-error.log) for the post-mortem and says where it is.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "test failed: evidence kept in {}",
                self.dir.path().display()
            );
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
