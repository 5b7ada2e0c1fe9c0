//! The agent's `AGENTMESH_<SECTION>_<KEY>` environment overrides (mechanism in
//! [`agentmesh_daemon::env`]).
//!
//! Only scalar keys of the known sections can be overridden (plus `outbound.server_pins` and
//! `outbound.front_door_pins`, which take a TOML array or a comma-separated list). A variable
//! whose section is known but whose key is not is an error (a typo must not be silently
//! ignored); other `AGENTMESH_*` variables, such as the backend's, are left alone.

use agentmesh_daemon::env::{Keys, Kind, Overrides};
use toml::Table;

pub use agentmesh_daemon::env::ENV_PREFIX;

const OVERRIDES: Overrides = Overrides(&[
    (
        "agent",
        Keys::Only(&[
            ("id", Kind::Str),
            ("site", Kind::Str),
            ("state_dir", Kind::Str),
            ("health_listen", Kind::Str),
            ("result_retention_secs", Kind::Toml),
            ("renew_before_days", Kind::Toml),
        ]),
    ),
    (
        "outbound",
        Keys::Only(&[
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
        ]),
    ),
    (
        "limits",
        Keys::Only(&[
            ("max_concurrency", Kind::Toml),
            ("commands_per_minute", Kind::Toml),
        ]),
    ),
    ("audit", Keys::Only(&[("path", Kind::Str)])),
]);

/// Applies the overrides found in `env` to `table`.
///
/// Returns the overridden keys as `(dotted key, variable name)`, or `(variable, message)` for a
/// variable that names an unknown key of a known section.
pub(super) fn apply_overrides(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, (String, String)> {
    match OVERRIDES.apply(table, env) {
        Ok(applied) => Ok(applied.into_iter().map(|a| (a.key, a.var)).collect()),
        Err(e) => Err((e.name, e.message)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use toml::Value;

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
}
