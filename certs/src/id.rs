//! Agent ids: the subject CN of an agent certificate.

use crate::{Error, Result};

/// Longest accepted agent id, in bytes (ASCII only, so also characters).
pub const MAX_AGENT_ID_LEN: usize = 64;

/// Checks that `id` is 1 to 64 characters of `[A-Za-z0-9._-]` starting with a letter or digit.
///
/// The backend and the agents reuse this so an id is valid everywhere or nowhere.
pub fn validate_agent_id(id: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidAgentId {
            id: id.to_owned(),
            reason,
        })
    };
    let Some(first) = id.chars().next() else {
        return invalid("must not be empty");
    };
    if id.len() > MAX_AGENT_ID_LEN {
        return invalid("must be at most 64 characters");
    }
    if !first.is_ascii_alphanumeric() {
        return invalid("must start with a letter or digit");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return invalid("may only contain A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for id in ["a", "web-01", "Host.example_1", "9", &"x".repeat(64)] {
            assert!(validate_agent_id(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_invalid_ids() {
        for id in [
            "",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "é",
            "a\n",
            "CN=x,O=y",
            &"x".repeat(65),
        ] {
            assert!(validate_agent_id(id).is_err(), "{id:?}");
        }
    }
}
