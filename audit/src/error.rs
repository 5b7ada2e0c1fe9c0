//! [`AuditError`], the error of everything that is not verification.

use std::io;
use std::sync::Arc;

/// What can go wrong opening, writing, querying or signing.
///
/// `Clone` because one write failure is reported to every waiter of its batch.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A file operation failed; `what` names the operation and the path.
    #[error("audit log: {what}: {source}")]
    Io {
        /// The operation and path, e.g. `open /var/lib/agentmesh/audit.jsonl`.
        what: String,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The writer's queue is full; the caller should refuse the work (for example with 503).
    #[error("audit log queue is full")]
    Overloaded,
    /// The log was closed (explicitly, or its writer has gone).
    #[error("audit log is closed")]
    Closed,
    /// The writer cannot write or fsync right now (a full disk, an I/O error): durable appends
    /// and flushes are refused at once, plain appends are kept (up to
    /// [`crate::AuditOptions::queue_capacity`]) and written when the writer's retry succeeds.
    #[error("audit log cannot write: {0}")]
    Unavailable(String),
    /// A query filter could not be used.
    #[error("invalid audit filter: {0}")]
    InvalidFilter(String),
    /// A key, certificate or signature input was unusable.
    #[error("audit signature: {0}")]
    Crypto(String),
}

impl AuditError {
    /// An [`AuditError::Io`] for `what`.
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> AuditError {
        AuditError::Io {
            what: what.into(),
            source: Arc::new(source),
        }
    }
}
