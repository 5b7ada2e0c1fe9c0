//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while generating, issuing, reading or writing certificates.
///
/// Messages name the file when one is involved; lower-level causes are reachable through
/// [`std::error::Error::source`], so print the whole chain (`{:#}` with anyhow).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What we were doing: "read", "write", "create directory", ...
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A file was read but its contents are unusable; the cause says why.
    #[error("invalid {}", path.display())]
    File {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<Error>,
    },
    /// The input is not PEM, or holds no block of the expected kind.
    #[error("PEM: {0}")]
    Pem(String),
    /// A DER structure (certificate, CSR, public key) could not be parsed.
    #[error("cannot parse {0}")]
    Parse(String),
    /// Key or certificate generation failed.
    #[error("cannot generate {0}")]
    Generate(String),
    /// The input parsed but is not acceptable (wrong kind, key mismatch, bad validity, ...).
    #[error("{0}")]
    Invalid(String),
    /// An agent id does not follow the rules of [`crate::validate_agent_id`].
    #[error("invalid agent id {id:?}: {reason}")]
    InvalidAgentId {
        /// The rejected id.
        id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Refused to overwrite an existing file (for example a CA key).
    #[error("{} already exists; refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Attributes this error to `path`, unless it already names a file.
    pub(crate) fn in_file(self, path: impl Into<PathBuf>) -> Error {
        match self {
            e @ (Error::Io { .. } | Error::File { .. } | Error::AlreadyExists { .. }) => e,
            e => Error::File {
                path: path.into(),
                source: Box::new(e),
            },
        }
    }

    /// Wraps an rcgen failure while generating `what`.
    pub(crate) fn generate(what: &str, e: rcgen::Error) -> Error {
        Error::Generate(format!("{what}: {e}"))
    }
}
