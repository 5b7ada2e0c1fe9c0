//! `AGENTMESH_<SECTION>_<KEY>` environment overrides, applied to the parsed TOML table before
//! it is deserialised (so overridden values are validated exactly like file values).
//!
//! Each daemon declares its own [`Overrides`]: the sections it knows and, per section, either
//! every key or a fixed list. A variable whose section is unknown is left alone (it may be the
//! other daemon's); one whose section is known but whose key is not in a fixed list is an error,
//! so a typo is not silently ignored.

use toml::{Table, Value};

/// Prefix of every override variable.
pub const ENV_PREFIX: &str = "AGENTMESH_";

/// How a variable's text becomes a TOML value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Taken verbatim as a string (ids, paths, URLs, addresses).
    Str,
    /// Parsed as a TOML value when it parses (`8080`, `true`, `["a"]`), else a string.
    Toml,
    /// A TOML array, or a comma/whitespace-separated list of strings.
    List,
}

/// The keys of one section that may be overridden.
#[derive(Clone, Copy, Debug)]
pub enum Keys {
    /// Any key, read as the given kind (deserialisation rejects unknown ones).
    Any(Kind),
    /// Only these keys; any other is an error naming the known ones.
    Only(&'static [(&'static str, Kind)]),
}

/// The sections a daemon's config lets the environment override.
#[derive(Clone, Copy, Debug)]
pub struct Overrides(pub &'static [(&'static str, Keys)]);

/// One applied override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Dotted key, `outbound.server_pins`.
    pub key: String,
    /// The variable that set it.
    pub var: String,
}

/// An override that cannot be applied: an unknown key of a known section, or a section that
/// the file sets to something other than a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideError {
    /// The variable, or the section, it is about.
    pub name: String,
    /// What is wrong (with the known variables of the section, for an unknown key).
    pub message: String,
}

impl Overrides {
    /// Applies the overrides found in `env` to `table`, in name order (whatever order the
    /// environment came in), and returns what was set.
    pub fn apply(
        &self,
        table: &mut Table,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<Applied>, OverrideError> {
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        let mut applied = Vec::new();
        for (name, raw) in vars {
            let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let Some((section, keys, key)) = self.0.iter().find_map(|(section, keys)| {
                rest.strip_prefix(section)
                    .and_then(|r| r.strip_prefix('_'))
                    .map(|key| (*section, *keys, key))
            }) else {
                continue;
            };
            let kind = match keys {
                Keys::Any(kind) => kind,
                Keys::Only(list) => match list.iter().find(|(k, _)| *k == key) {
                    Some((_, kind)) => *kind,
                    None => {
                        let known: Vec<String> = list
                            .iter()
                            .map(|(k, _)| format!("{ENV_PREFIX}{section}_{k}").to_ascii_uppercase())
                            .collect();
                        return Err(OverrideError {
                            name,
                            message: format!(
                                "unknown override for [{section}]; known: {}",
                                known.join(", ")
                            ),
                        });
                    }
                },
            };
            let entry = table
                .entry(section.to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            let Value::Table(section_table) = entry else {
                return Err(OverrideError {
                    name: section.to_owned(),
                    message: "must be a table".to_owned(),
                });
            };
            section_table.insert(key.to_owned(), parse_value(&raw, kind));
            applied.push(Applied {
                key: format!("{section}.{key}"),
                var: name,
            });
        }
        Ok(applied)
    }
}

/// The TOML value of `raw` read as `kind`.
pub fn parse_value(raw: &str, kind: Kind) -> Value {
    match kind {
        Kind::Str => Value::String(raw.to_owned()),
        Kind::Toml => parse_toml(raw).unwrap_or_else(|| Value::String(raw.to_owned())),
        Kind::List => match parse_toml(raw) {
            Some(v @ Value::Array(_)) => v,
            _ => Value::Array(
                raw.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
        },
    }
}

/// Parses `raw` as a single TOML value.
fn parse_toml(raw: &str) -> Option<Value> {
    let mut table: Table = toml::from_str(&format!("v = {raw}")).ok()?;
    if table.len() != 1 {
        return None;
    }
    table.remove("v")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FIXED: Overrides = Overrides(&[
        (
            "outbound",
            Keys::Only(&[
                ("backend_url", Kind::Str),
                ("server_pins", Kind::List),
                ("reconnect_min_ms", Kind::Toml),
            ]),
        ),
        ("agent", Keys::Only(&[("id", Kind::Str)])),
    ]);
    const OPEN: Overrides = Overrides(&[("hub", Keys::Any(Kind::Toml))]);

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_scalars_by_kind_and_leaves_other_sections_alone() {
        let mut table = Table::new();
        let applied = FIXED
            .apply(
                &mut table,
                vars(&[
                    ("AGENTMESH_AGENT_ID", "1234"),
                    ("AGENTMESH_OUTBOUND_RECONNECT_MIN_MS", "250"),
                    ("AGENTMESH_OUTBOUND_SERVER_PINS", "sha256//a=, sha256//b="),
                    ("AGENTMESH_HTTP_LISTEN", "0.0.0.0:1"),
                    ("PATH", "/bin"),
                ]),
            )
            .unwrap();
        assert_eq!(applied.len(), 3);
        assert_eq!(applied[0].key, "agent.id");
        assert_eq!(applied[0].var, "AGENTMESH_AGENT_ID");
        assert_eq!(table["agent"]["id"], Value::String("1234".into()));
        assert_eq!(table["outbound"]["reconnect_min_ms"], Value::Integer(250));
        assert_eq!(
            table["outbound"]["server_pins"],
            Value::Array(vec!["sha256//a=".into(), "sha256//b=".into()])
        );
        assert!(!table.contains_key("http"));
    }

    #[test]
    fn unknown_key_of_a_fixed_section_names_the_variable() {
        let mut table = Table::new();
        let err = FIXED
            .apply(&mut table, vars(&[("AGENTMESH_OUTBOUND_URL", "x")]))
            .unwrap_err();
        assert_eq!(err.name, "AGENTMESH_OUTBOUND_URL");
        assert!(
            err.message.contains("AGENTMESH_OUTBOUND_BACKEND_URL"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_open_section_takes_any_key() {
        let mut table = Table::new();
        OPEN.apply(&mut table, vars(&[("AGENTMESH_HUB_MAX_AGENTS", "5")]))
            .unwrap();
        assert_eq!(table["hub"]["max_agents"], Value::Integer(5));
    }

    #[test]
    fn toml_values_fall_back_to_strings() {
        assert_eq!(parse_value("12", Kind::Toml), Value::Integer(12));
        assert_eq!(parse_value("abc", Kind::Toml), Value::String("abc".into()));
        assert_eq!(
            parse_value("1\nx = 2", Kind::Toml),
            Value::String("1\nx = 2".into())
        );
    }
}
