//! Verb and parameter schemas (advertised in `hello`) and argument validation.
//!
//! Both sides validate with [`VerbSpec::validate_args`]: the backend to answer 422 early, the
//! agent because it is the authority. A `pattern` must match the *whole* value (it is anchored
//! as `^(?:pattern)$`), so a forgotten `^`/`$` in a config never widens what a verb accepts.
//! Patterns are compiled once, when the schema is decoded or built (see [`crate::pattern`]).
//!
//! A string value starting with `-` is refused unless its parameter sets `allow_leading_dash`:
//! a value placed as a whole argv element would otherwise be read by the program as an option
//! (`--output=/etc/cron.d/x`). The rule applies to every string parameter, also those used
//! inside a larger element, because one rule is easier to reason about than a per-template one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::pattern::{compile_pattern, Pattern, PatternError};

/// One verb as advertised in `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerbSpec {
    /// Verb name, unique per agent.
    pub name: String,
    /// What the verb does, for operators.
    #[serde(default)]
    pub description: String,
    /// Parameters by name.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// The verb's own timeout.
    #[serde(default)]
    pub timeout_ms: u64,
}

/// One typed parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// The type and its constraints (`"type": "string" | "integer" | "boolean" | "enum"`).
    #[serde(flatten)]
    pub kind: ParamKind,
    /// The caller must supply it.
    #[serde(default)]
    pub required: bool,
    /// Never logged or audited in clear.
    #[serde(default, skip_serializing_if = "is_false")]
    pub secret: bool,
    /// What the parameter means, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A parameter's type and constraints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    /// A UTF-8 string without NUL bytes.
    String {
        /// Regex the whole value must match.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<Pattern>,
        /// Maximum length in bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_len: Option<usize>,
        /// Values may start with `-` (otherwise refused as a possible option); sent only when
        /// true, so schemas without it look exactly as before.
        #[serde(default, skip_serializing_if = "is_false")]
        allow_leading_dash: bool,
    },
    /// A signed 64-bit integer.
    Integer {
        /// Smallest accepted value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        /// Largest accepted value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
    /// `true` or `false`.
    Boolean,
    /// One of a fixed set of strings.
    Enum {
        /// The accepted values.
        values: Vec<String>,
    },
}

/// Why an argument was refused; `param` names the offending parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("param `{param}`: {reason}")]
pub struct ArgError {
    /// The parameter at fault.
    pub param: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ArgError {
    fn new(param: &str, reason: impl Into<String>) -> Self {
        ArgError {
            param: param.to_owned(),
            reason: reason.into(),
        }
    }
}

impl VerbSpec {
    /// Checks the schema itself: `Err` names the first parameter whose pattern is unusable
    /// (too long, does not compile, over the size limit). Commands for such a verb are
    /// refused by [`VerbSpec::validate_args`] anyway; this lets a receiver say so once.
    pub fn check_patterns(&self) -> Result<(), ArgError> {
        for (name, spec) in &self.params {
            if let ParamKind::String {
                pattern: Some(p), ..
            } = &spec.kind
            {
                p.regex()
                    .map_err(|e| ArgError::new(name, format!("unusable pattern: {e}")))?;
            }
        }
        Ok(())
    }

    /// Checks `args` against the params: unknown, missing, wrong type and constraint
    /// violations are refused with the parameter named.
    pub fn validate_args(&self, args: &Map<String, Value>) -> Result<(), ArgError> {
        if let Some(name) = args.keys().find(|k| !self.params.contains_key(*k)) {
            return Err(ArgError::new(name, "unknown parameter"));
        }
        for (name, spec) in &self.params {
            match args.get(name) {
                None | Some(Value::Null) if spec.required => {
                    return Err(ArgError::new(name, "required parameter is missing"))
                }
                None | Some(Value::Null) => {}
                Some(value) => spec.validate(name, value)?,
            }
        }
        Ok(())
    }
}

impl ParamSpec {
    /// Checks one value against this parameter's type and constraints.
    pub fn validate(&self, name: &str, value: &Value) -> Result<(), ArgError> {
        match &self.kind {
            ParamKind::String {
                pattern,
                max_len,
                allow_leading_dash,
            } => {
                let s = value
                    .as_str()
                    .ok_or_else(|| ArgError::new(name, "expected a string"))?;
                if s.contains('\0') {
                    return Err(ArgError::new(name, "must not contain NUL bytes"));
                }
                if let Some(max) = max_len {
                    if s.len() > *max {
                        return Err(ArgError::new(name, format!("longer than {max} bytes")));
                    }
                }
                if s.starts_with('-') && !allow_leading_dash {
                    return Err(ArgError::new(
                        name,
                        "starts with '-', which a program could read as an option \
                         (the parameter does not set allow_leading_dash)",
                    ));
                }
                if let Some(p) = pattern {
                    let re = p
                        .regex()
                        .map_err(|e| ArgError::new(name, format!("the verb's {e}")))?;
                    if !re.is_match(s) {
                        return Err(ArgError::new(name, format!("does not match pattern {p}")));
                    }
                }
            }
            ParamKind::Integer { min, max } => {
                let n = value
                    .as_i64()
                    .ok_or_else(|| ArgError::new(name, "expected an integer"))?;
                if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                    return Err(ArgError::new(
                        name,
                        format!("out of range [{}, {}]", fmt_bound(*min), fmt_bound(*max)),
                    ));
                }
            }
            ParamKind::Boolean => {
                if !value.is_boolean() {
                    return Err(ArgError::new(name, "expected a boolean"));
                }
            }
            ParamKind::Enum { values } => {
                let s = value
                    .as_str()
                    .ok_or_else(|| ArgError::new(name, "expected a string"))?;
                if !values.iter().any(|v| v == s) {
                    return Err(ArgError::new(
                        name,
                        format!("must be one of {}", values.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn fmt_bound(b: Option<i64>) -> String {
    b.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Renders a validated argument as one argv element.
pub fn arg_to_argv(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> VerbSpec {
        serde_json::from_value(json!({
            "name": "create_user",
            "params": {
                "username": {"type": "string", "pattern": "[a-z]{3,8}", "required": true},
                "uid": {"type": "integer", "min": 1000, "max": 60000},
                "admin": {"type": "boolean"},
                "shell": {"type": "enum", "values": ["bash", "zsh"]},
                "password": {"type": "string", "secret": true, "max_len": 8}
            },
            "timeout_ms": 1000
        }))
        .unwrap()
    }

    fn check(args: Value) -> Result<(), ArgError> {
        spec().validate_args(args.as_object().unwrap())
    }

    #[test]
    fn accepts_valid_args() {
        check(json!({"username": "alice", "uid": 1001, "admin": true, "shell": "zsh"})).unwrap();
    }

    #[test]
    fn refuses_with_the_param_named() {
        let cases = [
            (json!({}), "username"),
            (json!({"username": "alice", "bogus": 1}), "bogus"),
            (json!({"username": "Alice"}), "username"),
            (json!({"username": "alice; rm -rf /"}), "username"),
            (json!({"username": 5}), "username"),
            (json!({"username": "alice", "uid": 5}), "uid"),
            (json!({"username": "alice", "uid": "1001"}), "uid"),
            (json!({"username": "alice", "admin": "yes"}), "admin"),
            (json!({"username": "alice", "shell": "fish"}), "shell"),
            (
                json!({"username": "alice", "password": "123456789"}),
                "password",
            ),
        ];
        for (args, param) in cases {
            let err = check(args.clone()).unwrap_err();
            assert_eq!(err.param, param, "{args}: {err}");
        }
    }

    #[test]
    fn pattern_is_anchored() {
        // "[a-z]{3,8}" would find a match inside "xx alice xx" if it were not anchored.
        assert!(check(json!({"username": "xx alice xx"})).is_err());
    }

    #[test]
    fn secret_flag_round_trips_and_is_omitted_when_false() {
        let s = serde_json::to_value(spec()).unwrap();
        assert_eq!(s["params"]["password"]["secret"], json!(true));
        assert!(s["params"]["username"].get("secret").is_none());
    }

    #[test]
    fn a_leading_dash_is_refused_unless_the_param_allows_it() {
        // `password` has no pattern: before, anything went, `-rf` included.
        let err = check(json!({"username": "alice", "password": "-rf"})).unwrap_err();
        assert_eq!(err.param, "password");
        assert!(err.reason.contains("allow_leading_dash"), "{err}");
        // Even where the pattern would accept it.
        let spec: VerbSpec = serde_json::from_value(json!({
            "name": "grep",
            "params": {
                "expr": {"type": "string", "pattern": "[-a-z]+"},
                "opt": {"type": "string", "allow_leading_dash": true}
            }
        }))
        .unwrap();
        let args = |v: Value| v.as_object().unwrap().clone();
        assert!(spec.validate_args(&args(json!({"expr": "-x"}))).is_err());
        spec.validate_args(&args(json!({"expr": "x-"}))).unwrap();
        spec.validate_args(&args(json!({"opt": "-rf"}))).unwrap();
        spec.validate_args(&args(json!({"opt": "--"}))).unwrap();
    }

    #[test]
    fn allow_leading_dash_is_sent_only_when_true() {
        let s = serde_json::to_value(spec()).unwrap();
        assert!(s["params"]["username"].get("allow_leading_dash").is_none());
        let param: ParamSpec =
            serde_json::from_value(json!({"type": "string", "allow_leading_dash": true})).unwrap();
        assert_eq!(
            serde_json::to_value(&param).unwrap(),
            json!({"type": "string", "allow_leading_dash": true, "required": false})
        );
    }

    #[test]
    fn an_unusable_pattern_makes_the_verb_unusable() {
        let spec: VerbSpec = serde_json::from_value(json!({
            "name": "x",
            "params": {
                "ok": {"type": "string", "pattern": "[a-z]+"},
                "big": {"type": "string", "pattern": "(\\w{100}){100}"},
                "long": {"type": "string", "pattern": "a".repeat(crate::pattern::MAX_PATTERN_LEN + 1)}
            }
        }))
        .unwrap();
        let err = spec.check_patterns().unwrap_err();
        assert_eq!(err.param, "big");
        let err = spec
            .validate_args(json!({"big": "a"}).as_object().unwrap())
            .unwrap_err();
        assert_eq!(err.param, "big");
        let err = spec
            .validate_args(json!({"long": "a"}).as_object().unwrap())
            .unwrap_err();
        assert!(err.reason.contains("limit"), "{err}");
        assert!(self::spec().check_patterns().is_ok());
        // The wire form is untouched: the pattern goes back out as it came in.
        let wire = serde_json::to_value(&spec).unwrap();
        assert_eq!(wire["params"]["big"]["pattern"], json!("(\\w{100}){100}"));
    }
}
