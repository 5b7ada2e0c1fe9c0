//! Where the files of one log live: the current file and its rotated predecessors.
//!
//! A rotated file is named `<current name>.<first_seq>-<last_seq>` with both numbers
//! zero-padded to 12 digits (`audit.jsonl.000000000001-000000004711`), so `ls` lists them in
//! chain order; code sorts them by the parsed numbers and does not depend on the padding.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::AuditError;

/// Digits of zero padding in rotated file names.
const SEQ_DIGITS: usize = 12;

/// The name a file holding `first..=last` is renamed to when it is rotated away.
pub(crate) fn rotated_path(path: &Path, first: u64, last: u64) -> PathBuf {
    let mut name: OsString = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(format!(".{first:0SEQ_DIGITS$}-{last:0SEQ_DIGITS$}"));
    path.with_file_name(name)
}

/// `(first_seq, last_seq)` if `candidate` is a rotated file of the log at `path`.
pub(crate) fn rotated_range(path: &Path, candidate: &Path) -> Option<(u64, u64)> {
    let base = path.file_name()?.to_str()?;
    let name = candidate.file_name()?.to_str()?;
    let suffix = name.strip_prefix(base)?.strip_prefix('.')?;
    let (first, last) = suffix.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !digits(last) {
        return None;
    }
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// `(first_seq, last_seq, path)` of every rotated file of the log at `path`, oldest first.
pub(crate) fn rotated_files(path: &Path) -> Result<Vec<(u64, u64, PathBuf)>, AuditError> {
    let dir = parent_dir(path);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io(format!("list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io(format!("list {}", dir.display()), e))?;
        let candidate = entry.path();
        if let Some((first, last)) = rotated_range(path, &candidate) {
            out.push((first, last, candidate));
        }
    }
    out.sort();
    Ok(out)
}

/// Every file of the log at `path` in chain order: rotated files oldest first, then the
/// current file if it exists. This is the list [`crate::verify_files`] wants.
pub fn log_files(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut files: Vec<PathBuf> = rotated_files(path)?
        .into_iter()
        .map(|(_, _, p)| p)
        .collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    Ok(files)
}

/// Puts command-line paths in chain order: a shell glob such as `audit.jsonl*` lists the
/// current file before its rotated siblings, so rotated files (by first seq) go first and
/// other files keep their relative order after them.
pub(crate) fn chain_order(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut keyed: Vec<(u64, usize, PathBuf)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let first = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('.'))
                .and_then(|(base, _)| rotated_range(&p.with_file_name(base), p))
                .map_or(u64::MAX, |(first, _)| first);
            (first, i, p.clone())
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, _, p)| p).collect()
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsyncs the directory holding `path`, so a create or rename in it is durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), AuditError> {
    let dir = parent_dir(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(format!("fsync directory {}", dir.display()), e))
}

/// Creates `dir` and missing parents with mode 0700.
pub(crate) fn create_dir(dir: &Path) -> Result<(), AuditError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| AuditError::io(format!("create directory {}", dir.display()), e))
}

/// Opens (creating with mode 0600) the log file for reading and appending; true if created.
/// Append mode keeps every write at the end, also after a repair truncates the file.
pub(crate) fn open_log_file(path: &Path) -> Result<(File, bool), AuditError> {
    let existed = path.exists();
    let mut options = fs::OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(path)
        .map_err(|e| AuditError::io(format!("open {}", path.display()), e))?;
    Ok((file, !existed))
}

/// The last complete (newline-terminated) line of `path`, without its newline, reading
/// backwards so a large rotated file is not read whole. `None` for an empty file.
pub(crate) fn last_line(path: &Path) -> io::Result<Option<Vec<u8>>> {
    const CHUNK: u64 = 64 * 1024;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut tail: Vec<u8> = Vec::new();
    let mut start = len;
    loop {
        let from = start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(start - from).unwrap_or(0)];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start = from;
        // The text before the final newline; the line starts after the newline before it.
        let body_end = match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => i,
            None if start == 0 => return Ok(None),
            None => continue,
        };
        if let Some(i) = tail[..body_end].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(tail[i + 1..body_end].to_vec()));
        }
        if start == 0 {
            return Ok(Some(tail[..body_end].to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_round_trip() {
        let path = Path::new("/var/log/a/audit.jsonl");
        let rotated = rotated_path(path, 1, 4711);
        assert_eq!(
            rotated,
            Path::new("/var/log/a/audit.jsonl.000000000001-000000004711")
        );
        assert_eq!(rotated_range(path, &rotated), Some((1, 4711)));
        assert_eq!(rotated_range(path, path), None);
        assert_eq!(
            rotated_range(path, Path::new("/var/log/a/audit.jsonl.1-x")),
            None
        );
    }

    #[test]
    fn chain_order_puts_current_last() {
        let paths: Vec<PathBuf> = [
            "d/audit.jsonl",
            "d/audit.jsonl.000000000011-000000000020",
            "d/audit.jsonl.000000000001-000000000010",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let ordered = chain_order(&paths);
        assert_eq!(
            ordered,
            vec![paths[2].clone(), paths[1].clone(), paths[0].clone()]
        );
    }

    #[test]
    fn last_line_finds_the_final_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"").unwrap();
        assert_eq!(last_line(&p).unwrap(), None);
        fs::write(&p, b"one\n").unwrap();
        assert_eq!(last_line(&p).unwrap(), Some(b"one".to_vec()));
        let mut big = vec![b'x'; 200_000];
        big.push(b'\n');
        big.extend_from_slice(&vec![b'y'; 150_000]);
        big.extend_from_slice(b"\ntorn");
        fs::write(&p, &big).unwrap();
        assert_eq!(last_line(&p).unwrap(), Some(vec![b'y'; 150_000]));
    }
}
