//! The previous on-disk format (one JSON file per command id), read once to import it.

use std::io;
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
