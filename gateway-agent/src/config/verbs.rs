//! `[[verbs]]`: the allowlist, and how it is advertised in `hello`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use agentmesh_protocol::{ParamKind, ParamSpec, Pattern, VerbSpec};
use serde::Deserialize;

/// One allowlisted verb: a program and an argv template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerbConfig {
    /// Verb name, unique per agent; must not be a built-in (`ping`, `sysinfo`).
    pub name: String,
    /// What it does, for operators.
    #[serde(default)]
    pub description: String,
    /// Absolute path of the program; run directly, never through a shell.
    pub program: PathBuf,
    /// argv after the program; `{param}` is replaced by the parameter's value, `{{`/`}}` are
    /// literal braces. Each element stays one argv element whatever the value holds.
    #[serde(default)]
    pub args: Vec<String>,
    /// Wall-clock limit; the process group is killed at expiry.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Run as this user instead of the agent's.
    #[serde(default)]
    pub run_as: Option<String>,
    /// Working directory (absolute).
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Names of environment variables passed through; everything else is cleared.
    #[serde(default)]
    pub env: Vec<String>,
    /// Cap on each of stdout and stderr; the rest is dropped and `truncated` set.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: usize,
    /// Typed parameters by name.
    #[serde(default)]
    pub params: BTreeMap<String, ParamConfig>,
}

fn default_timeout_secs() -> u64 {
    30
}
fn default_max_output_bytes() -> usize {
    64 * 1024
}

/// One typed parameter of a verb.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamConfig {
    /// `string`, `integer`, `boolean` or `enum`.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// The caller must supply it.
    #[serde(default)]
    pub required: bool,
    /// Never logged or audited in clear.
    #[serde(default)]
    pub secret: bool,
    /// `string`: regex the whole value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `string`: maximum length in bytes.
    #[serde(default)]
    pub max_len: Option<usize>,
    /// `string`: values may start with `-`. Off by default, because a value that starts with
    /// `-` is read by most programs as an option (`--output=/etc/cron.d/x`).
    #[serde(default)]
    pub allow_leading_dash: Option<bool>,
    /// `integer`: smallest value.
    #[serde(default)]
    pub min: Option<i64>,
    /// `integer`: largest value.
    #[serde(default)]
    pub max: Option<i64>,
    /// `enum`: the accepted values.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// What the parameter means, for operators.
    #[serde(default)]
    pub description: Option<String>,
}

/// A parameter's type name in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// A string, optionally constrained by `pattern` and `max_len`.
    String,
    /// An integer, optionally constrained by `min` and `max`.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// One of `values`.
    Enum,
}

impl ParamType {
    /// The name used in the config and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Boolean => "boolean",
            ParamType::Enum => "enum",
        }
    }
}

impl ParamConfig {
    /// The wire schema of this parameter (constraints that do not fit the type were refused
    /// by validation, so they are not carried here).
    pub fn to_spec(&self) -> ParamSpec {
        let kind = match self.kind {
            ParamType::String => ParamKind::String {
                pattern: self.pattern.as_deref().map(Pattern::new),
                max_len: self.max_len,
                allow_leading_dash: self.allow_leading_dash.unwrap_or(false),
            },
            ParamType::Integer => ParamKind::Integer {
                min: self.min,
                max: self.max,
            },
            ParamType::Boolean => ParamKind::Boolean,
            ParamType::Enum => ParamKind::Enum {
                values: self.values.clone().unwrap_or_default(),
            },
        };
        ParamSpec {
            kind,
            required: self.required,
            secret: self.secret,
            description: self.description.clone(),
        }
    }
}

impl VerbConfig {
    /// The schema advertised in `hello`.
    pub fn to_spec(&self) -> VerbSpec {
        VerbSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            params: self
                .params
                .iter()
                .map(|(name, p)| (name.clone(), p.to_spec()))
                .collect(),
            timeout_ms: self.timeout_secs.saturating_mul(1000),
        }
    }
}

/// Names of the verbs every agent has without configuring a program.
pub const BUILTIN_VERB_NAMES: &[&str] = &["ping", "sysinfo"];

/// The built-in verbs: `ping` and `sysinfo`, neither takes parameters.
pub fn builtin_verbs() -> Vec<VerbSpec> {
    vec![
        VerbSpec {
            name: "ping".to_owned(),
            description: "Answers with the agent's time and version".to_owned(),
            params: BTreeMap::new(),
            timeout_ms: 5_000,
        },
        VerbSpec {
            name: "sysinfo".to_owned(),
            description: "Reports the host's OS, kernel, uptime, load, memory and disks".to_owned(),
            params: BTreeMap::new(),
            timeout_ms: 10_000,
        },
    ]
}

/// A piece of an argv template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Copied as is.
    Literal(String),
    /// Replaced by the named parameter's value.
    Param(String),
}

/// Splits an argv template into literals and `{param}` references; `{{` and `}}` are literal
/// braces. Errors say what is wrong with the template.
pub fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed '{{' in {template:?}")),
                    }
                }
                if !is_param_name(&name) {
                    return Err(format!(
                        "{{{name}}} in {template:?} is not a parameter reference \
                         (write {{{{ and }}}} for literal braces)"
                    ));
                }
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(Segment::Param(name));
            }
            '}' => return Err(format!("unmatched '}}' in {template:?} (write }}}})")),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 64 bytes.
pub(super) fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_segments() {
        assert_eq!(
            parse_template("--user={username}"),
            Ok(vec![
                Segment::Literal("--user=".into()),
                Segment::Param("username".into())
            ])
        );
        assert_eq!(
            parse_template("{{literal}}"),
            Ok(vec![Segment::Literal("{literal}".into())])
        );
        for bad in ["{user", "user}", "{}", "{a b}", "{$(id)}"] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
    }
}
