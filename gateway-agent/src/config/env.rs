//! `AGENTMESH_<SECTION>_<KEY>` environment overrides, applied to the parsed TOML table before
//! it is deserialised (so overridden values are validated exactly like file values).
//!
//! Only scalar keys of the known sections can be overridden (plus `outbound.server_pins`, which
//! takes a TOML array or a comma-separated list). A variable whose section is known but whose key
//! is not is an error (a typo must not be silently ignored); other `AGENTMESH_*` variables, such
//! as the backend's, are left alone.

use toml::{Table, Value};

/// Prefix of every override variable.
pub const ENV_PREFIX: &str = "AGENTMESH_";

#[derive(Clone, Copy)]
enum Kind {
    /// Taken verbatim as a string (ids, paths, URLs, addresses).
    Str,
    /// Parsed as a TOML value when it parses (numbers, booleans), else a string.
    Toml,
    /// A TOML array, or a comma/whitespace-separated list of strings.
    List,
}

const KEYS: &[(&str, &[(&str, Kind)])] = &[
    (
        "agent",
        &[
            ("id", Kind::Str),
            ("site", Kind::Str),
            ("state_dir", Kind::Str),
            ("health_listen", Kind::Str),
            ("result_retention_secs", Kind::Toml),
            ("renew_before_days", Kind::Toml),
        ],
    ),
    (
        "outbound",
        &[
            ("backend_url", Kind::Str),
            ("ca", Kind::Str),
            ("cert", Kind::Str),
            ("key", Kind::Str),
            ("server_pins", Kind::List),
            ("front_door_pins", Kind::List),
            ("reconnect_min_ms", Kind::Toml),
            ("reconnect_max_ms", Kind::Toml),
            ("healthy_after_secs", Kind::Toml),
            ("max_message_bytes", Kind::Toml),
        ],
    ),
    (
        "limits",
        &[
            ("max_concurrency", Kind::Toml),
            ("commands_per_minute", Kind::Toml),
        ],
    ),
    ("audit", &[("path", Kind::Str)]),
];

/// Applies the overrides found in `env` to `table`.
///
/// Returns the overridden keys as `(dotted key, variable name)`, or `(variable, message)` for a
/// variable that names an unknown key of a known section.
pub(super) fn apply_overrides(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, (String, String)> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    // Deterministic order regardless of how the environment was iterated.
    vars.sort();
    let mut applied = Vec::new();
    for (name, raw) in vars {
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section, keys, key)) = KEYS.iter().find_map(|(section, keys)| {
            rest.strip_prefix(section)
                .and_then(|r| r.strip_prefix('_'))
                .map(|key| (*section, *keys, key))
        }) else {
            continue;
        };
        let Some((key, kind)) = keys.iter().find(|(k, _)| *k == key) else {
            let known: Vec<String> = keys
                .iter()
                .map(|(k, _)| format!("{ENV_PREFIX}{}_{}", section, k).to_ascii_uppercase())
                .collect();
            return Err((
                name,
                format!(
                    "unknown override for [{section}]; known: {}",
                    known.join(", ")
                ),
            ));
        };
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(section_table) = entry else {
            return Err((section.to_owned(), "must be a table".to_owned()));
        };
        section_table.insert((*key).to_owned(), parse_value(&raw, *kind));
        applied.push((format!("{section}.{key}"), name));
    }
    Ok(applied)
}

fn parse_value(raw: &str, kind: Kind) -> Value {
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

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_scalars_by_kind() {
        let mut table = Table::new();
        let applied = apply_overrides(
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
        assert_eq!(table["agent"]["id"], Value::String("1234".into()));
        assert_eq!(table["outbound"]["reconnect_min_ms"], Value::Integer(250));
        assert_eq!(
            table["outbound"]["server_pins"],
            Value::Array(vec!["sha256//a=".into(), "sha256//b=".into()])
        );
        assert!(!table.contains_key("http"));
    }

    #[test]
    fn unknown_key_of_known_section_names_the_variable() {
        let mut table = Table::new();
        let err =
            apply_overrides(&mut table, vars(&[("AGENTMESH_OUTBOUND_URL", "x")])).unwrap_err();
        assert_eq!(err.0, "AGENTMESH_OUTBOUND_URL");
        assert!(
            err.1.contains("AGENTMESH_OUTBOUND_BACKEND_URL"),
            "{}",
            err.1
        );
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
