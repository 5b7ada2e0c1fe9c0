//! The on-disk form of a command record, and atomic, durable writes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use agentmesh_protocol::ResultFrame;
use serde::{Deserialize, Serialize};

/// Version of the file format.
pub(super) const FORMAT: u32 = 1;

/// One file in `state_dir/results`. Unknown fields are ignored (a newer agent may add some).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) format: u32,
    pub(super) command_id: String,
    pub(super) verb: String,
    pub(super) requested_by: String,
    pub(super) started_ms: u64,
    #[serde(default)]
    pub(super) finished_ms: Option<u64>,
    #[serde(default)]
    pub(super) delivered_ms: Option<u64>,
    #[serde(default)]
    pub(super) result: Option<ResultFrame>,
}

pub(super) fn read_record(path: &Path) -> io::Result<Record> {
    let bytes = std::fs::read(path)?;
    let record: Record = serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if record.format != FORMAT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown record format {}", record.format),
        ));
    }
    Ok(record)
}

/// temp file → write → fsync → rename → fsync(dir): after a crash either the old or the new
/// content is there, never a mix.
pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
