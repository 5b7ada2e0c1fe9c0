//! `restore`: checks that the node is stopped and the target empty (or `--force`), then
//! places the store and audit files where the config says.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::copy::{self, write_durable};
use super::{read_manifest, BackupError, AUDIT_DIR, CONFIG_DIR, STORE_FILE};
use crate::config::BackendConfig;
use crate::store::sqlite::SCHEMA_VERSION;

/// How long the liveness probe waits for a listener to answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What `restore` did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// Where the store was placed.
    pub store: PathBuf,
    /// Audit files placed.
    pub audit_files: Vec<PathBuf>,
    /// The config file was absent and was written from the backup.
    pub config_written: bool,
    /// Schema version of the restored store (migrated at the next start if older).
    pub schema_version: i32,
    /// The backup's latest checkpoint seq.
    pub checkpoint_seq: Option<u64>,
}

/// Restores the backup in `from` onto the node configured by `config_path` (written from the
/// backup when it does not exist). Refuses while anything answers on the configured
/// listeners or holds the store, and — unless `force` — when the store or audit files
/// already exist (with `force` they are replaced).
pub fn restore(config_path: &Path, from: &Path, force: bool) -> Result<RestoreReport, BackupError> {
    let manifest = read_manifest(from)?;
    if manifest.schema_version > SCHEMA_VERSION {
        return Err(BackupError::BadBackup {
            dir: from.display().to_string(),
            message: format!(
                "store schema {} is newer than this build supports ({SCHEMA_VERSION}); restore \
                 with backend-agent {} or later",
                manifest.schema_version, manifest.backend_version
            ),
        });
    }
    let config_written = !config_path.exists();
    if config_written {
        let src = manifest
            .files
            .iter()
            .find(|f| f.path.starts_with(&format!("{CONFIG_DIR}/")))
            .ok_or_else(|| {
                BackupError::Refused(format!(
                    "{} does not exist and the backup holds no config",
                    config_path.display()
                ))
            })?;
        copy::file(&from.join(&src.path), config_path)?;
    }
    let config = BackendConfig::load(config_path)
        .map_err(|e| BackupError::Refused(format!("config: {e}")))?;
    refuse_if_live(&config)?;
    if config.store.url.is_some() {
        return Err(BackupError::Refused(
            "[store] url is set: the node's store is in PostgreSQL, restore it with pg_restore"
                .into(),
        ));
    }
    let store = config.store.path.clone();
    let audit = config.audit.path.clone();
    let existing = existing_files(&store, &audit)?;
    if !existing.is_empty() {
        if !force {
            let list: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
            return Err(BackupError::Refused(format!(
                "files exist: {}; restore onto an empty node, or pass --force to replace them",
                list.join(", ")
            )));
        }
        for path in &existing {
            fs::remove_file(path)
                .map_err(|e| BackupError::io(format!("remove {}", path.display()), e))?;
        }
    }
    let store_dir = parent(&store);
    copy::create_dir(&store_dir)?;
    let staged = store.with_extension("restoring");
    copy::file(&from.join(STORE_FILE), &staged)?;
    check_integrity(&staged)?;
    fs::rename(&staged, &store)
        .map_err(|e| BackupError::io(format!("rename into {}", store.display()), e))?;
    let audit_dir = parent(&audit);
    copy::create_dir(&audit_dir)?;
    let target_name = audit
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut audit_files = Vec::new();
    for f in manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with(&format!("{AUDIT_DIR}/")))
    {
        let name = f.path.trim_start_matches(&format!("{AUDIT_DIR}/"));
        // Rotated files carry the current file's name as prefix; follow a renamed log.
        let renamed = match name.strip_prefix(&manifest.audit_name) {
            Some(rest) => format!("{target_name}{rest}"),
            None => name.to_owned(),
        };
        let dst = audit_dir.join(renamed);
        let bytes = fs::read(from.join(&f.path))
            .map_err(|e| BackupError::io(format!("read {}", f.path), e))?;
        write_durable(&dst, &bytes)?;
        audit_files.push(dst);
    }
    for dir in [&store_dir, &audit_dir] {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(RestoreReport {
        store,
        audit_files,
        config_written,
        schema_version: manifest.schema_version,
        checkpoint_seq: manifest.checkpoint_seq,
    })
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A backend answering on its listeners, or a store another process holds, means "running".
fn refuse_if_live(config: &BackendConfig) -> Result<(), BackupError> {
    for (key, addr) in [
        ("http.listen", config.http.listen),
        ("hub.listen", config.hub.listen),
    ] {
        let probe = SocketAddr::new(dialable(addr.ip()), addr.port());
        if TcpStream::connect_timeout(&probe, PROBE_TIMEOUT).is_ok() {
            return Err(BackupError::Refused(format!(
                "something answers on {key} {probe}: stop the backend before restoring"
            )));
        }
    }
    let store = &config.store.path;
    if store.is_file() {
        let locked = Connection::open_with_flags(store, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .and_then(|c| {
                c.busy_timeout(Duration::ZERO)?;
                c.execute_batch("BEGIN EXCLUSIVE; ROLLBACK;")
            });
        if let Err(e) = locked {
            return Err(BackupError::Refused(format!(
                "the store {} is in use or unreadable ({e}): stop the backend before restoring",
                store.display()
            )));
        }
    }
    Ok(())
}

fn dialable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// The store (with its WAL and shared-memory files) and every audit file that exist.
fn existing_files(store: &Path, audit: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut out = Vec::new();
    let name = store
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = store.with_file_name(format!("{name}{suffix}"));
        if p.exists() {
            out.push(p);
        }
    }
    let logs = agentmesh_audit::log_files(audit).map_err(|e| {
        BackupError::io(
            format!("list {}", audit.display()),
            std::io::Error::other(e),
        )
    })?;
    out.extend(logs);
    Ok(out)
}

fn check_integrity(path: &Path) -> Result<(), BackupError> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
            BackupError::Store {
                path: path.display().to_string(),
                message: e.to_string(),
            }
        })?;
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| BackupError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if verdict != "ok" {
        return Err(BackupError::Store {
            path: path.display().to_string(),
            message: format!("integrity check: {verdict}"),
        });
    }
    Ok(())
}
