//! Copying: the store through SQLite's online backup API, the audit files up to their last
//! complete line, and plain files; everything written 0600 and fsynced.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use super::{BackupError, FileEntry};

/// Times the audit copy is retried when the log rotates under it.
const AUDIT_COPY_TRIES: usize = 5;
/// Times a busy or locked backup step is retried (each after a short pause).
const BUSY_TRIES: usize = 200;

/// Creates `out` (mode 0700); refuses one that is not empty.
pub(super) fn prepare_out(out: &Path) -> Result<(), BackupError> {
    if out.exists() {
        let mut entries =
            fs::read_dir(out).map_err(|e| BackupError::io(format!("list {}", out.display()), e))?;
        if entries.next().is_some() {
            return Err(BackupError::Refused(format!(
                "{} is not empty; back up into a new directory",
                out.display()
            )));
        }
    }
    create_dir(out)
}

pub(super) fn create_dir(dir: &Path) -> Result<(), BackupError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| BackupError::io(format!("create {}", dir.display()), e))
}

/// Copies the store at `src` into `dst` as one consistent snapshot; returns its schema
/// version and latest checkpoint seq.
pub(super) fn store(src: &Path, dst: &Path) -> Result<(i32, Option<u64>), BackupError> {
    let err = |path: &Path, e: rusqlite::Error| BackupError::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if !src.is_file() {
        return Err(BackupError::Store {
            path: src.display().to_string(),
            message: "no such file (is [store] path right?)".into(),
        });
    }
    let source = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| err(src, e))?;
    source
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| err(src, e))?;
    let mut target = Connection::open(dst).map_err(|e| err(dst, e))?;
    {
        let backup = Backup::new(&source, &mut target).map_err(|e| err(dst, e))?;
        // All pages in one step: one read transaction, so one consistent snapshot even while
        // the backend writes (WAL readers do not block writers).
        let mut tries = 0;
        loop {
            match backup.step(-1).map_err(|e| err(src, e))? {
                StepResult::Done => break,
                StepResult::More => continue,
                _ if tries < BUSY_TRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                _ => {
                    return Err(BackupError::Store {
                        path: src.display().to_string(),
                        message: "the store stayed locked; try again".into(),
                    })
                }
            }
        }
    }
    // A self-contained file: no WAL beside it.
    let _: String = target
        .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
        .map_err(|e| err(dst, e))?;
    let version: i32 = target
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| err(dst, e))?;
    let checkpoint = latest_checkpoint_seq(&target);
    drop(target);
    restrict(dst)?;
    sync_file(dst)?;
    Ok((version, checkpoint))
}

/// Seq of the newest checkpoint row, if the table exists and has one.
pub(super) fn latest_checkpoint_seq(conn: &Connection) -> Option<u64> {
    conn.query_row(
        "SELECT seq FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get::<_, i64>(0),
    )
    .ok()
    .and_then(|s| u64::try_from(s).ok())
}

/// Copies every file of the audit log at `log` into `dst_dir`; retried when the log rotates
/// during the copy, so the copied files are one unbroken chain.
pub(super) fn audit(
    log: &Path,
    dst_dir: &Path,
    root: &Path,
) -> Result<Vec<FileEntry>, BackupError> {
    create_dir(dst_dir)?;
    for _ in 0..AUDIT_COPY_TRIES {
        let before = list(log)?;
        let mut entries = Vec::new();
        let mut vanished = false;
        for src in &before {
            let Some(name) = src.file_name() else {
                continue;
            };
            let dst = dst_dir.join(name);
            match copy_complete_lines(src, &dst) {
                Ok(()) => entries.push(entry(root, &dst)?),
                Err(BackupError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    vanished = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if !vanished && list(log)? == before {
            return Ok(entries);
        }
        // Rotated under us: start over in a clean folder.
        fs::remove_dir_all(dst_dir)
            .map_err(|e| BackupError::io(format!("clear {}", dst_dir.display()), e))?;
        create_dir(dst_dir)?;
    }
    Err(BackupError::AuditBusy)
}

fn list(log: &Path) -> Result<Vec<std::path::PathBuf>, BackupError> {
    agentmesh_audit::log_files(log)
        .map_err(|e| BackupError::io(format!("list {}", log.display()), std::io::Error::other(e)))
}

/// Copies `src` up to and including its last `\n` (a record being written is left out).
fn copy_complete_lines(src: &Path, dst: &Path) -> Result<(), BackupError> {
    let bytes = fs::read(src).map_err(|e| BackupError::io(format!("read {}", src.display()), e))?;
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    write_durable(dst, &bytes[..end])
}

/// Copies a plain file.
pub(super) fn file(src: &Path, dst: &Path) -> Result<(), BackupError> {
    let bytes = fs::read(src).map_err(|e| BackupError::io(format!("read {}", src.display()), e))?;
    if let Some(dir) = dst.parent() {
        create_dir(dir)?;
    }
    write_durable(dst, &bytes)
}

/// Writes `bytes` to `path` (mode 0600) and fsyncs it.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .map_err(|e| BackupError::io(format!("create {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| BackupError::io(format!("write {}", path.display()), e))
}

fn restrict(path: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| BackupError::io(format!("chmod {}", path.display()), e))?;
    }
    Ok(())
}

fn sync_file(path: &Path) -> Result<(), BackupError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| BackupError::io(format!("fsync {}", path.display()), e))
}

/// The manifest entry of `path` (inside `root`).
pub(super) fn entry(root: &Path, path: &Path) -> Result<FileEntry, BackupError> {
    let bytes =
        fs::read(path).map_err(|e| BackupError::io(format!("read {}", path.display()), e))?;
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    Ok(FileEntry {
        path: rel,
        bytes: bytes.len() as u64,
        sha256: crate::hex::encode(&Sha256::digest(&bytes)),
    })
}
