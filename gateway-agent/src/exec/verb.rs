//! The verb table the executor runs from: built-ins plus `[[verbs]]`, each with its advertised
//! schema (validated again here: the agent is the authority), its argv template and how its
//! process is set up (environment, `run_as`).
//!
//! # argv substitution
//! Each template element becomes exactly one argv element, whatever the values hold (`;`,
//! `$(...)`, spaces and newlines arrive literally; there is no shell). A parameter that is
//! optional and absent (or `null`):
//! - drops the whole element when the element is exactly `"{param}"`, so `["{flag}"]` does not
//!   pass an empty argument;
//! - is replaced by the empty string inside a larger element (`"--quota={quota}"` becomes
//!   `"--quota="`).
//!
//! # Environment
//! Cleared, then only the names in the verb's `env` list are copied from the agent's own
//! environment. `PATH` is set to [`DEFAULT_PATH`] unless `PATH` itself is in the list: programs
//! are absolute paths, but scripts usually call tools by name and an empty `PATH` breaks them in
//! confusing ways; a fixed system `PATH` has no relative or writable-by-others entries.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::Arc;

use agentmesh_protocol::verbs::arg_to_argv;
use agentmesh_protocol::VerbSpec;
use nix::unistd::{geteuid, User};
use serde_json::{Map, Value};

use crate::config::{builtin_verbs, parse_template, Segment, VerbConfig};

/// `PATH` given to programs whose verb does not pass `PATH` through.
pub const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// One verb the agent runs.
#[derive(Debug)]
pub struct Verb {
    /// The schema advertised in `hello` and enforced on every command.
    pub spec: VerbSpec,
    /// What running it means.
    pub kind: VerbKind,
}

/// A built-in or a configured program.
#[derive(Debug)]
pub enum VerbKind {
    /// Built-in `ping`.
    Ping,
    /// Built-in `sysinfo`.
    Sysinfo,
    /// A `[[verbs]]` entry.
    Program(Box<ProgramVerb>),
}

/// A configured verb with its parsed argv template.
#[derive(Debug)]
pub struct ProgramVerb {
    /// The verb's config.
    pub config: VerbConfig,
    /// Its `args`, parsed.
    pub argv: ArgvTemplate,
}

/// Builds the table: built-ins first, then the configured verbs. `Err` names the verb whose
/// template does not parse (config validation refuses those, so this only guards direct use).
pub fn table(verbs: &[VerbConfig]) -> Result<HashMap<String, Arc<Verb>>, String> {
    let mut out = HashMap::new();
    for spec in builtin_verbs() {
        let kind = match spec.name.as_str() {
            "ping" => VerbKind::Ping,
            "sysinfo" => VerbKind::Sysinfo,
            other => return Err(format!("built-in verb {other:?} has no implementation")),
        };
        out.insert(spec.name.clone(), Arc::new(Verb { spec, kind }));
    }
    for config in verbs {
        let argv = ArgvTemplate::parse(&config.args)
            .map_err(|e| format!("verb {:?}: {e}", config.name))?;
        let verb = Verb {
            spec: config.to_spec(),
            kind: VerbKind::Program(Box::new(ProgramVerb {
                config: config.clone(),
                argv,
            })),
        };
        out.insert(config.name.clone(), Arc::new(verb));
    }
    Ok(out)
}

/// A verb's `args`, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgvTemplate {
    elements: Vec<Element>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    /// Exactly `"{param}"`: dropped when the param is absent.
    Whole(String),
    /// Anything else: literals and params concatenated.
    Mixed(Vec<Segment>),
}

impl ArgvTemplate {
    /// Parses each template element.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let elements = args
            .iter()
            .map(|arg| {
                let mut segments = parse_template(arg)?;
                Ok(match segments.as_slice() {
                    [Segment::Param(_)] => match segments.pop() {
                        Some(Segment::Param(name)) => Element::Whole(name),
                        _ => Element::Mixed(segments),
                    },
                    _ => Element::Mixed(segments),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ArgvTemplate { elements })
    }

    /// The argv (after the program) for already validated `args`.
    pub fn render(&self, args: &Map<String, Value>) -> Vec<String> {
        let value = |name: &str| args.get(name).filter(|v| !v.is_null());
        let mut out = Vec::with_capacity(self.elements.len());
        for element in &self.elements {
            match element {
                Element::Whole(name) => {
                    if let Some(v) = value(name) {
                        out.push(arg_to_argv(v));
                    }
                }
                Element::Mixed(segments) => {
                    let mut s = String::new();
                    for segment in segments {
                        match segment {
                            Segment::Literal(l) => s.push_str(l),
                            Segment::Param(name) => {
                                if let Some(v) = value(name) {
                                    s.push_str(&arg_to_argv(v));
                                }
                            }
                        }
                    }
                    out.push(s);
                }
            }
        }
        out
    }
}

/// The environment of a program: the allowlisted names that `lookup` knows, plus `PATH`.
pub fn environment(
    allow: &[String],
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = allow
        .iter()
        .filter_map(|name| lookup(name).map(|v| (name.clone(), v)))
        .collect();
    if !allow.iter().any(|n| n == "PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.into()));
    }
    env
}

/// The `(uid, gid)` to run as for `run_as = name`: `None` when that is the agent's own user.
/// A non-root agent cannot switch to anyone else; that is an error, never a silent fallback.
pub fn resolve_run_as(name: &str) -> Result<Option<(u32, u32)>, String> {
    let user = User::from_name(name)
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("run_as user {name:?} does not exist on this host"))?;
    let euid = geteuid();
    if user.uid == euid {
        return Ok(None);
    }
    if !euid.is_root() {
        return Err(format!(
            "the agent runs as uid {euid}, not root, so it cannot run commands as {name:?} (uid {})",
            user.uid
        ));
    }
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &[&str], args: Value) -> Vec<String> {
        let template: Vec<String> = template.iter().map(|s| (*s).to_owned()).collect();
        ArgvTemplate::parse(&template)
            .unwrap()
            .render(args.as_object().unwrap())
    }

    /// The verb table is built once per config load; admitting a command only runs the
    /// regex compiled then.
    #[test]
    fn patterns_are_compiled_when_the_table_is_built_not_per_command() {
        use agentmesh_protocol::ParamKind;
        let config: VerbConfig = toml::from_str(
            "name = \"restart\"\nprogram = \"/bin/true\"\nargs = [\"{unit}\"]\n\
             params.unit = { type = \"string\", pattern = \"[a-z]+\", required = true }\n",
        )
        .unwrap();
        let table = table(&[config]).unwrap();
        let verb = Arc::clone(&table["restart"]);
        let ParamKind::String {
            pattern: Some(pattern),
            ..
        } = &verb.spec.params["unit"].kind
        else {
            panic!("no pattern")
        };
        let compiled: *const _ = pattern.regex().unwrap();
        for unit in ["nginx", "sshd", "NOPE"] {
            let args = json!({ "unit": unit });
            let _ = verb.spec.validate_args(args.as_object().unwrap());
        }
        let again: *const _ = pattern.regex().unwrap();
        assert_eq!(compiled, again, "compiled once, reused");
    }

    #[test]
    fn each_value_is_one_whole_argv_element() {
        let hostile = "a;b $(id) `x` && rm -rf / | cat\nnext";
        assert_eq!(
            render(&["--msg", "{m}"], json!({"m": hostile})),
            ["--msg", hostile]
        );
        assert_eq!(
            render(&["--user={u}", "{{literal}}"], json!({"u": "a b"})),
            ["--user=a b", "{literal}"]
        );
    }

    #[test]
    fn typed_values_render_as_text() {
        assert_eq!(
            render(
                &["{n}", "{flag}", "{color}", "-n{n}"],
                json!({"n": -3, "flag": true, "color": "red"})
            ),
            ["-3", "true", "red", "-n-3"]
        );
    }

    #[test]
    fn an_absent_optional_param_drops_its_element_or_becomes_empty() {
        assert_eq!(
            render(&["a", "{opt}", "--q={opt}", "z"], json!({})),
            ["a", "--q=", "z"]
        );
        assert_eq!(
            render(&["{opt}", "--q={opt}"], json!({"opt": null})),
            ["--q="]
        );
        // An empty string given on purpose is kept.
        assert_eq!(render(&["{opt}"], json!({"opt": ""})), [""]);
    }

    #[test]
    fn the_environment_is_the_allowlist_plus_a_fixed_path() {
        let lookup = |name: &str| match name {
            "LANG" => Some(OsString::from("C.UTF-8")),
            "PATH" => Some(OsString::from("/opt/bin:/usr/bin")),
            _ => None,
        };
        let env = environment(&["LANG".into(), "MISSING".into()], lookup);
        assert_eq!(
            env,
            [
                ("LANG".to_owned(), OsString::from("C.UTF-8")),
                ("PATH".to_owned(), OsString::from(DEFAULT_PATH)),
            ]
        );
        let env = environment(&["PATH".into()], lookup);
        assert_eq!(
            env,
            [("PATH".to_owned(), OsString::from("/opt/bin:/usr/bin"))]
        );
    }

    #[test]
    fn run_as_the_agents_own_user_needs_no_switch() {
        let me = User::from_uid(geteuid()).unwrap().unwrap();
        assert_eq!(resolve_run_as(&me.name), Ok(None));
        let err = resolve_run_as("no-such-user-agentmesh").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        if !geteuid().is_root() {
            let err = resolve_run_as("root").unwrap_err();
            assert!(err.contains("not root"), "{err}");
        }
    }

    #[test]
    fn the_table_has_the_builtins_and_the_configured_verbs() {
        let table = table(&[]).unwrap();
        assert!(matches!(table["ping"].kind, VerbKind::Ping));
        assert!(matches!(table["sysinfo"].kind, VerbKind::Sysinfo));
    }
}
