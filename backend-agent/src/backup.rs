//! `backend-agent backup` and `restore`: a consistent copy of a node's state, taken while it
//! runs, and putting it back on a stopped node.
//!
//! A backup directory holds `store.db` (SQLite online backup: one consistent snapshot of the
//! store, taken without stopping writers), `audit/` (every file of the audit log, the current
//! one cut after its last complete line), `config/<name>` (the config file) and
//! `manifest.json` (schema version, the latest signed audit checkpoint, SHA-256 of every
//! file). The store is copied *before* the audit log: its latest checkpoint vouches only for
//! records already on disk, so the copied log always reaches it and
//! `audit verify --config` passes on the restored node. TLS keys are not copied: back them
//! up with your secrets.
//!
//! # Layout
//! - `backup/copy`: copying the store and the audit files, hashing.
//! - `backup/restore`: checks (a live node, existing files, a newer schema) and placing files.

mod copy;
mod restore;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::BackendConfig;

pub use restore::{restore, RestoreReport};

/// Format version of `manifest.json`.
pub const MANIFEST_VERSION: u32 = 1;
/// File name of the store copy in a backup directory.
pub const STORE_FILE: &str = "store.db";
/// Folder of the audit files in a backup directory.
pub const AUDIT_DIR: &str = "audit";
/// Folder of the config file in a backup directory.
pub const CONFIG_DIR: &str = "config";
/// File name of the manifest.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// SQLite refused (open, backup, integrity check).
    #[error("store {path}: {message}")]
    Store {
        /// The database file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The audit files kept changing (rotation) while being copied.
    #[error("the audit log kept rotating while it was copied; try again")]
    AuditBusy,
    /// The backup directory is not usable (missing manifest, bad hash, newer schema...).
    #[error("backup {dir}: {message}")]
    BadBackup {
        /// The backup directory.
        dir: String,
        /// What is wrong.
        message: String,
    },
    /// The target is in use or not empty.
    #[error("{0}")]
    Refused(String),
}

impl BackupError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> BackupError {
        BackupError::Io {
            what: what.into(),
            source,
        }
    }
}

/// One copied file in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Path inside the backup directory (`/`-separated).
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// `manifest.json`: what a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// When the backup was taken (RFC 3339 UTC).
    pub created_at: String,
    /// Version of the backend that took it.
    pub backend_version: String,
    /// `PRAGMA user_version` of the store copy.
    pub schema_version: i32,
    /// Seq of the latest signed audit checkpoint in the store copy, if any.
    pub checkpoint_seq: Option<u64>,
    /// File name of the current audit log on the source node.
    pub audit_name: String,
    /// Every file, the store first.
    pub files: Vec<FileEntry>,
}

/// What `backup` did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The backup directory.
    pub dir: PathBuf,
    /// The manifest written.
    pub manifest: Manifest,
}

/// Takes a backup of the node configured by `config` (read from `config_path`) into `out`,
/// which must not exist or be empty. Safe while the backend runs.
pub fn backup(
    config: &BackendConfig,
    config_path: &Path,
    out: &Path,
) -> Result<BackupReport, BackupError> {
    if let Some(url) = &config.store.url {
        return Err(BackupError::Refused(format!(
            "the store is in PostgreSQL ({url}): back it up with pg_dump; this command copies \
             the SQLite file only (docs/store-postgres.md)"
        )));
    }
    backup_files(&config.store.path, &config.audit.path, config_path, out)
}

/// [`backup`] given the store, the audit log and the config file by path.
pub fn backup_files(
    store: &Path,
    audit_log: &Path,
    config_path: &Path,
    out: &Path,
) -> Result<BackupReport, BackupError> {
    copy::prepare_out(out)?;
    let mut files = Vec::new();
    let store_copy = out.join(STORE_FILE);
    let (schema_version, checkpoint_seq) = copy::store(store, &store_copy)?;
    files.push(copy::entry(out, &store_copy)?);
    files.extend(copy::audit(audit_log, &out.join(AUDIT_DIR), out)?);
    let config_name = config_path.file_name().map_or_else(
        || "backend.toml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let config_copy = out.join(CONFIG_DIR).join(&config_name);
    copy::file(config_path, &config_copy)?;
    files.push(copy::entry(out, &config_copy)?);
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        created_at: crate::clock::now_rfc3339(),
        backend_version: env!("CARGO_PKG_VERSION").to_owned(),
        schema_version,
        checkpoint_seq,
        audit_name: audit_log
            .file_name()
            .map_or_else(|| "audit.log".into(), |n| n.to_string_lossy().into_owned()),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::io("encode manifest", std::io::Error::other(e)))?;
    copy::write_durable(&out.join(MANIFEST_FILE), &json)?;
    Ok(BackupReport {
        dir: out.to_path_buf(),
        manifest,
    })
}

/// Reads and checks `manifest.json` of the backup in `dir`: every file present with its hash.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let bad = |message: String| BackupError::BadBackup {
        dir: dir.display().to_string(),
        message,
    };
    let path = dir.join(MANIFEST_FILE);
    let bytes =
        std::fs::read(&path).map_err(|e| bad(format!("cannot read {MANIFEST_FILE}: {e}")))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("bad {MANIFEST_FILE}: {e}")))?;
    if manifest.version != MANIFEST_VERSION {
        return Err(bad(format!(
            "manifest version {} (this build reads {MANIFEST_VERSION})",
            manifest.version
        )));
    }
    for f in &manifest.files {
        if f.path.contains("..") || f.path.starts_with('/') {
            return Err(bad(format!("unsafe path {:?} in the manifest", f.path)));
        }
        let actual = copy::entry(dir, &dir.join(&f.path)).map_err(|e| bad(e.to_string()))?;
        if actual.sha256 != f.sha256 {
            return Err(bad(format!(
                "{} does not match its SHA-256 in the manifest",
                f.path
            )));
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests;
