//! Parameter patterns: compiled once, when a schema is decoded (a `hello`) or built (the
//! agent's config), within fixed limits.
//!
//! A pattern comes from an agent's `hello`, so the hub must not compile it per command (a
//! large pattern would burn CPU on every submit) nor without a bound (a pattern that compiles
//! to a huge automaton). [`Pattern`] keeps the source (what goes on the wire, unchanged) next to
//! the compiled regex or the reason it could not be compiled; validation against a pattern
//! that failed refuses every value of that parameter, so such a verb cannot be run at all.

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest pattern source accepted, in bytes; longer ones are refused without compiling.
pub const MAX_PATTERN_LEN: usize = 4096;

/// Heap limit for one compiled pattern (regex's `size_limit`); a pattern that needs more is
/// refused.
pub const PATTERN_SIZE_LIMIT: usize = 256 * 1024;

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The source is longer than [`MAX_PATTERN_LEN`].
    #[error("pattern is {len} bytes long, the limit is {MAX_PATTERN_LEN}")]
    TooLong {
        /// Length of the source in bytes.
        len: usize,
    },
    /// The regex does not parse, or compiles to more than [`PATTERN_SIZE_LIMIT`].
    #[error("pattern does not compile: {0}")]
    Invalid(String),
}

/// Compiles a config pattern the way validation applies it: anchored as `^(?:pattern)$` so it
/// must match the whole value, within [`MAX_PATTERN_LEN`] and [`PATTERN_SIZE_LIMIT`].
pub fn compile_pattern(pattern: &str) -> Result<Regex, PatternError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(PatternError::TooLong { len: pattern.len() });
    }
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(PATTERN_SIZE_LIMIT)
        .dfa_size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| PatternError::Invalid(e.to_string()))
}

/// A string parameter's pattern: its source and its compiled form (or why there is none).
/// Serialises as the plain source string.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    compiled: Result<Regex, PatternError>,
}

impl Pattern {
    /// Compiles `source` now; a failure is kept and reported by [`Pattern::regex`].
    pub fn new(source: impl Into<String>) -> Pattern {
        let source = source.into();
        let compiled = compile_pattern(&source);
        Pattern { source, compiled }
    }

    /// The pattern as written in the config and sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The compiled, anchored regex, or why the pattern is unusable.
    pub fn regex(&self) -> Result<&Regex, &PatternError> {
        self.compiled.as_ref()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        // The compiled form is a function of the source.
        self.source == other.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Never fails on a bad pattern: the frame still decodes, and the verb is refused.
        String::deserialize(deserializer).map(Pattern::new)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_anchored_and_compiled_once() {
        let p = Pattern::new("[a-z]+");
        let re = p.regex().unwrap();
        assert!(re.is_match("abc"));
        assert!(!re.is_match("abc def"));
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""[a-z]+""#);
        let back: Pattern = serde_json::from_str(r#""[a-z]+""#).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn over_long_and_over_size_patterns_are_refused() {
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert_eq!(
            compile_pattern(&long).unwrap_err(),
            PatternError::TooLong { len: long.len() }
        );
        // Short to write, large once compiled: nested counted repetition over Unicode classes.
        let huge = r"(\w{100}){100}";
        assert!(huge.len() <= MAX_PATTERN_LEN);
        assert!(matches!(
            compile_pattern(huge),
            Err(PatternError::Invalid(_))
        ));
        // A bad pattern still decodes (the frame is fine), but is unusable.
        let bad: Pattern = serde_json::from_str(r#""(unclosed""#).unwrap();
        assert!(bad.regex().is_err());
    }
}
