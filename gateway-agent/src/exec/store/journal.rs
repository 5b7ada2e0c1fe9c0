//! The journal file: append-only, one record per line, `<checksum> <json>\n`.
//!
//! The checksum is the first 8 bytes of the SHA-256 of the JSON, in hex. Replay reads lines
//! until the first one that is incomplete or does not check out (a torn last write), and the
//! file is cut there, so later appends always follow a valid prefix.
//!
//! Durability is a group commit: [`Journal::append`] writes under a short lock and returns the
//! position it reached; [`Syncer::sync_to`] fsyncs unless someone else's fsync already covered
//! that position, so concurrent commands share one `fdatasync`. Compaction replaces the file
//! (temp file, fsync, rename, fsync of the directory) and bumps the generation: a position
//! from an older generation is already durable in the new file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use agentmesh_protocol::ResultFrame;
use serde::{Deserialize, Serialize};

/// File name under `state_dir/results`.
pub const JOURNAL: &str = "journal";

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Op {
    /// A command is about to run.
    Start {
        id: String,
        verb: String,
        by: String,
        ms: u64,
        /// Seq of its durable `command_requested` audit record, when the audit log is on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit_seq: Option<u64>,
    },
    /// Its result (signed, fitted), stored before it is sent.
    Finish {
        id: String,
        ms: u64,
        /// Pin of the key that signed `result`, and the message limit it was fitted to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        result: ResultFrame,
    },
    /// The result was written to a live session (written lazily, never fsynced on its own:
    /// losing one only means the result is sent again, and the hub ignores duplicates).
    Delivered { id: String, ms: u64 },
    /// Every command admitted with an audit seq up to `audit_seq` has its `start` above.
    Mark { audit_seq: u64 },
}

/// `op` as a journal line.
pub(super) fn encode(op: &Op) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(op).map_err(io::Error::other)?;
    let mut line = Vec::with_capacity(json.len() + 18);
    line.extend_from_slice(checksum(&json).as_bytes());
    line.push(b' ');
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

/// The record in one line (with or without its `\n`); `None` when it does not check out.
pub(super) fn decode(line: &[u8]) -> Option<Op> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let (sum, json) = (line.get(..16)?, line.get(17..)?);
    if line.get(16) != Some(&b' ') || checksum(json).as_bytes() != sum {
        return None;
    }
    serde_json::from_slice(json).ok()
}

fn checksum(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a line sits in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// The open journal: appends and reads. Callers serialise access with a lock.
#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Bumped by every compaction.
    generation: u64,
    /// `delivered` lines not yet written; they go out with the next append.
    lazy: Vec<u8>,
}

/// Lazy lines are written at once beyond this many bytes.
const LAZY_MAX: usize = 64 * 1024;

impl Journal {
    /// Opens (creating) `dir/journal` for appending; `len` is where the valid prefix ends:
    /// anything after it is cut.
    pub(super) fn open(dir: &Path, len: u64) -> io::Result<Journal> {
        let path = dir.join(JOURNAL);
        let file = open_file(&path)?;
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        Ok(Journal {
            dir: dir.to_path_buf(),
            file,
            len,
            generation: 0,
            lazy: Vec::new(),
        })
    }

    /// Bytes in the file.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The current generation and end of file: what a sync must cover.
    pub(super) fn position(&self) -> (u64, u64) {
        (self.generation, self.len)
    }

    /// A handle for fsync that does not need the journal's lock.
    pub(super) fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Appends `line` (after any lazy lines); returns where it landed. Not yet durable.
    pub(super) fn append(&mut self, line: &[u8]) -> io::Result<Span> {
        let lazy = std::mem::take(&mut self.lazy);
        let mut buf = lazy;
        let offset = self.len + buf.len() as u64;
        buf.extend_from_slice(line);
        self.write(&buf)?;
        Ok(Span {
            offset,
            len: u32::try_from(line.len()).unwrap_or(u32::MAX),
        })
    }

    /// Queues a lazy line (written with the next append, or now when many are queued).
    pub(super) fn append_lazy(&mut self, line: &[u8]) -> io::Result<()> {
        self.lazy.extend_from_slice(line);
        if self.lazy.len() > LAZY_MAX {
            self.flush_lazy()?;
        }
        Ok(())
    }

    /// Writes the lazy lines now (shutdown, compaction).
    pub(super) fn flush_lazy(&mut self) -> io::Result<()> {
        if self.lazy.is_empty() {
            return Ok(());
        }
        let lazy = std::mem::take(&mut self.lazy);
        self.write(&lazy)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut a partial write so the file stays a valid prefix.
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// The line at `span`.
    pub(super) fn read(&self, span: Span) -> io::Result<Vec<u8>> {
        read_at(&self.file, span)
    }

    /// Replaces the file, durably, with what `fill` puts into it; `fill` reads the old
    /// lines from the file it is given. On error the old file stays.
    pub(super) fn replace(
        &mut self,
        fill: impl FnOnce(&File, &mut Rewriter<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{JOURNAL}.tmp"));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut w = Rewriter {
                out: io::BufWriter::new(&mut file),
                offset: 0,
            };
            fill(&self.file, &mut w)?;
            let len = w.offset;
            w.out.flush()?;
            drop(w);
            file.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(JOURNAL))?;
            File::open(&self.dir)?.sync_all()?;
            Ok::<u64, io::Error>(len)
        })();
        let len = match written {
            Ok(len) => len,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.file = open_file(&self.dir.join(JOURNAL))?;
        self.len = len;
        self.generation += 1;
        // The new file was written from the index, which already holds these deliveries.
        self.lazy.clear();
        Ok(())
    }
}

/// Writes the new file during [`Journal::replace`].
pub(super) struct Rewriter<'a> {
    out: io::BufWriter<&'a mut File>,
    offset: u64,
}

impl Rewriter<'_> {
    /// Adds one complete line; returns where it lands in the new file.
    pub(super) fn put(&mut self, line: &[u8]) -> io::Result<Span> {
        self.out.write_all(line)?;
        let span = Span {
            offset: self.offset,
            len: u32::try_from(line.len()).unwrap_or(u32::MAX),
        };
        self.offset += line.len() as u64;
        Ok(span)
    }
}

/// The line at `span` of `file`.
pub(super) fn read_at(file: &File, span: Span) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; span.len as usize];
    file.read_exact_at(&mut buf, span.offset)?;
    Ok(buf)
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Group commit: who fsynced how far.
#[derive(Debug)]
pub(super) struct Syncer {
    file: File,
    generation: u64,
    synced: u64,
}

impl Syncer {
    /// Starts with everything in `journal` counted as durable (it was just opened or replaced).
    pub(super) fn new(journal: &Journal) -> io::Result<Syncer> {
        Ok(Syncer {
            file: journal.sync_handle()?,
            generation: journal.generation,
            synced: journal.len,
        })
    }

    /// Makes everything up to `at` durable, unless an fsync since already did. `current` is
    /// the journal's position now (read under its lock just before), which this fsync covers.
    pub(super) fn sync_to(&mut self, at: (u64, u64), current: (u64, u64)) -> io::Result<()> {
        if at.0 < self.generation || (at.0 == self.generation && at.1 <= self.synced) {
            return Ok(());
        }
        self.file.sync_data()?;
        self.generation = current.0;
        self.synced = current.1;
        Ok(())
    }

    /// After a compaction: the new file is durable as a whole.
    pub(super) fn replaced(&mut self, journal: &Journal) -> io::Result<()> {
        *self = Syncer::new(journal)?;
        Ok(())
    }
}
