//! Parameter patterns: compiled once, when a `hello` is decoded or the agent's config is
//! built, within fixed limits.
//!
//! A pattern comes from an agent's `hello`, so the hub must not compile it per command (a
//! large pattern would burn CPU on every submit) nor without a bound (a pattern that compiles
//! to a huge automaton, or a `hello` packed with thousands of patterns). [`Pattern`] keeps the
//! source (what goes on the wire, unchanged) next to the compiled regex or the reason it could
//! not be compiled, shared by every clone of the schema; validation against a pattern that
//! failed refuses every value of that parameter, so such a verb cannot be run at all.
//!
//! Bounds: a source over [`MAX_PATTERN_LEN`] is refused without compiling; compiling stops at
//! [`PATTERN_SIZE_LIMIT`]; the decoder compiles at most [`MAX_PATTERNS_PER_HELLO`] patterns of
//! one `hello` and marks the rest unusable, so one `hello` costs at most that many bounded
//! compilations (about 1 ms each at the size limit on a slow core).

use std::fmt;
use std::sync::{Arc, OnceLock};

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest pattern source accepted, in bytes; longer ones are refused without compiling.
pub const MAX_PATTERN_LEN: usize = 4096;

/// Heap limit for one compiled pattern (regex's `size_limit`); a pattern that needs more is
/// refused.
pub const PATTERN_SIZE_LIMIT: usize = 256 * 1024;

/// Most patterns one `hello` may carry; those after it are unusable (their verbs refused).
pub const MAX_PATTERNS_PER_HELLO: usize = 128;

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
    /// The `hello` carried more than [`MAX_PATTERNS_PER_HELLO`] patterns; this one was not
    /// compiled.
    #[error("pattern not compiled: the hello carries more than {MAX_PATTERNS_PER_HELLO} patterns")]
    TooMany,
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
        .map_err(|e| PatternError::Invalid(one_line(&e.to_string())))
}

/// regex's parse errors draw a caret diagram over several lines; API answers and log lines
/// want one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A string parameter's pattern: its source and its compiled form (or why there is none).
/// Serialises as the plain source string; clones share the compiled form.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    compiled: Arc<OnceLock<Result<Regex, PatternError>>>,
}

impl Pattern {
    /// Compiles `source` now; a failure is kept and reported by [`Pattern::regex`].
    pub fn new(source: impl Into<String>) -> Pattern {
        let pattern = Pattern::uncompiled(source.into());
        let _ = pattern.regex();
        pattern
    }

    /// A pattern compiled on first use (decoded schemas; the decoder compiles them at once).
    fn uncompiled(source: String) -> Pattern {
        Pattern {
            source,
            compiled: Arc::default(),
        }
    }

    /// The pattern as written in the config and sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The compiled, anchored regex, or why the pattern is unusable. Compiles on the first
    /// call if nothing did before; every clone shares the result.
    pub fn regex(&self) -> Result<&Regex, &PatternError> {
        self.compiled
            .get_or_init(|| compile_pattern(&self.source))
            .as_ref()
    }

    /// Marks a not yet compiled pattern unusable without compiling it.
    pub(crate) fn refuse(&self, why: PatternError) {
        let _ = self.compiled.set(Err(why));
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
        // Compiled by the decoder (within the per-hello budget) or on first use.
        String::deserialize(deserializer).map(Pattern::uncompiled)
    }
}

/// Compiles the patterns of `verbs` in order, the first [`MAX_PATTERNS_PER_HELLO`] of them;
/// the rest are marked [`PatternError::TooMany`] without being compiled.
pub(crate) fn compile_hello_patterns(verbs: &[crate::VerbSpec]) {
    let patterns = verbs
        .iter()
        .flat_map(|v| v.params.values())
        .filter_map(|p| match &p.kind {
            crate::ParamKind::String {
                pattern: Some(p), ..
            } => Some(p),
            _ => None,
        });
    for (i, pattern) in patterns.enumerate() {
        if i < MAX_PATTERNS_PER_HELLO {
            let _ = pattern.regex();
        } else {
            pattern.refuse(PatternError::TooMany);
        }
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
        let err = bad.regex().unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn clones_share_one_compilation_and_a_refusal() {
        let p: Pattern = serde_json::from_str(r#""[a-z]+""#).unwrap();
        let clone = p.clone();
        assert!(Arc::ptr_eq(&p.compiled, &clone.compiled));
        assert!(
            p.compiled.get().is_none(),
            "decoded patterns compile on demand"
        );
        clone.regex().unwrap();
        assert!(p.compiled.get().is_some(), "compiled once for every clone");
        let q: Pattern = serde_json::from_str(r#""[a-z]+""#).unwrap();
        q.refuse(PatternError::TooMany);
        assert_eq!(q.regex().unwrap_err(), &PatternError::TooMany);
        // Refusing a compiled pattern changes nothing.
        p.refuse(PatternError::TooMany);
        assert!(p.regex().is_ok());
    }
}
