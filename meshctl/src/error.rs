//! The one error type of meshctl and the exit codes it maps to (docs/meshctl.md, "Exit codes").

/// Documented process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode;

impl ExitCode {
    /// Success.
    pub const OK: u8 = 0;
    /// A command (or a fan-out target) failed; `run` exits with the command's own code instead.
    pub const FAILED: u8 = 1;
    /// Usage error, bad profile, or a parameter refused before anything was sent.
    pub const USAGE: u8 = 2;
    /// The API answered 4xx (other than 401/403).
    pub const API: u8 = 3;
    /// The API answered 401 or 403.
    pub const AUTH: u8 = 4;
    /// The backend is unreachable, answered 5xx, or answered something that is not the API.
    pub const UNREACHABLE: u8 = 5;
    /// The command timed out (or a `wait` outlived its timeout: 504).
    pub const TIMEOUT: u8 = 124;
}

/// Why meshctl could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line, profile or parameter; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// The API answered an error (`{"error": {"code", "message"}}`).
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The backend could not be reached or the exchange broke.
    #[error("{0}")]
    Unreachable(String),
    /// The answer was not what the API sends.
    #[error("unexpected answer from the backend: {0}")]
    BadAnswer(String),
    /// A deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// A local failure (writing output, reading a file).
    #[error("{0}")]
    Local(String),
}

impl Error {
    /// The exit code this error maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => ExitCode::USAGE,
            Error::Api {
                status: 401 | 403, ..
            } => ExitCode::AUTH,
            Error::Api { status: 504, .. } => ExitCode::TIMEOUT,
            Error::Api { status, .. } if *status < 500 => ExitCode::API,
            Error::Api { .. } | Error::Unreachable(_) | Error::BadAnswer(_) => {
                ExitCode::UNREACHABLE
            }
            Error::Timeout(_) => ExitCode::TIMEOUT,
            Error::Local(_) => ExitCode::FAILED,
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_documented_codes() {
        let api = |status| Error::Api {
            status,
            code: "x".into(),
            message: "m".into(),
        };
        assert_eq!(api(401).exit_code(), 4);
        assert_eq!(api(403).exit_code(), 4);
        assert_eq!(api(404).exit_code(), 3);
        assert_eq!(api(422).exit_code(), 3);
        assert_eq!(api(503).exit_code(), 5);
        assert_eq!(api(504).exit_code(), 124);
        assert_eq!(Error::usage("x").exit_code(), 2);
        assert_eq!(Error::Unreachable("x".into()).exit_code(), 5);
    }
}
