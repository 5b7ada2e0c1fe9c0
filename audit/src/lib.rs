#![forbid(unsafe_code)]
//! The agentmesh audit log: tamper-evident, hash-chained JSON Lines, used by the backend and
//! by each gateway agent for its own log (the format is in `docs/audit.md`).
//!
//! Every record carries `seq`, `prev` (the previous record's hash) and `hash` (SHA-256 of its
//! canonical form), so changing, deleting or reordering a record breaks the chain at that
//! record. One writer thread owns the file; callers hold cheap [`AuditLog`] handles.
//! [`AuditLog::append_durable`] completes after the record is fsynced, and concurrent callers
//! share fsyncs (group commit). At open, a torn tail left by a crash is cut and the cut is
//! itself recorded (`log_repaired`); files rotate at a size limit with the chain continuing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agentmesh_audit::AuditError> {
//! use agentmesh_audit::{kinds, AuditEvent, AuditLog, AuditOptions};
//! use serde_json::json;
//! let (log, report) = AuditLog::open("/var/lib/agentmesh/audit.jsonl".as_ref(), AuditOptions::default())?;
//! assert!(report.broken.is_none());
//! let event = AuditEvent::new(kinds::COMMAND_REQUESTED)
//!     .actor("alice")
//!     .agent("web-01")
//!     .command("c-1")
//!     .details(json!({"verb": "ping"}));
//! let record = log.append_durable(event).await?; // on disk before the command is dispatched
//! println!("seq {}", record.seq);
//! log.close().await
//! # }
//! ```
//!
//! # Layout
//!
//! - `record`: [`AuditEvent`], [`AuditRecord`], [`kinds`], the canonical form and hashing.
//! - `writer`: [`AuditLog`] and [`AuditOptions`]: the handle and its health.
//! - `thread`: the writer thread: group commit, retrying and resuming after a failed write.
//! - `segment`: the current file: placing records on the chain, writing, fsync, rotation.
//! - `repair`: what [`AuditLog::open`] checks and cuts; [`OpenReport`].
//! - `verify`: [`verify_files`], [`VerifyError`], [`run_verify_cli`] for `audit verify FILE...`.
//! - `anchor`: signed [`Checkpoint`]s of the chain's tail and [`verify_anchored`], which
//!   detects records cut off the end.
//! - `query`: [`query`] with an [`AuditFilter`].
//! - `sign`: result digests and signatures ([`result_digest`], [`ResultSignature`]) and
//!   [`salted_hash`] for `secret` params.
//! - `stats`: [`FSYNC_STATS`], the fsync latency histogram for metrics.
//! - `files`: rotated file names ([`log_files`]), directory fsync, tail reading.
//! - `error`: [`AuditError`].

mod anchor;
mod error;
#[cfg(test)]
mod fault;
mod files;
mod query;
mod record;
mod repair;
mod segment;
mod sign;
mod stats;
mod thread;
mod verify;
mod writer;

pub use anchor::{
    find_record, verify_anchored, AnchorError, Checkpoint, CheckpointSigner, CHECKPOINT_CONTEXT,
};
pub use error::AuditError;
pub use files::log_files;
/// Re-exported from mesh-certs, the one place that parses X.509.
pub use mesh_certs::spki_der_from_cert_der;
pub use query::{query, AuditFilter, DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT};
pub use record::{canonical_json, kinds, AuditEvent, AuditRecord, GENESIS_PREV};
pub use repair::OpenReport;
pub use sign::{
    result_digest, salted_hash, salted_secret, secret_matches, sign_result_digest,
    verify_result_signature, ResultSignature, ResultSigner, RESULT_SIGNATURE_CONTEXT,
    SECRET_SALT_BYTES,
};
pub use stats::{FsyncSnapshot, FsyncStats, FSYNC_BUCKETS_SECS, FSYNC_STATS};
pub use verify::{run_verify_cli, verify_files, BreakReason, VerifyError, VerifySummary};
pub use writer::{AuditLog, AuditOptions};
