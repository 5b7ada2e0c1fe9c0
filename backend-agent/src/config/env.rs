//! `AGENTMESH_<SECTION>_<KEY>` environment overrides.

/// Prefix of environment overrides: `AGENTMESH_HUB_LISTEN` sets `hub.listen`.
pub const ENV_PREFIX: &str = "AGENTMESH_";
const SECTIONS: &[&str] = &["http", "hub", "store", "audit", "limits", "ca"];

/// Applies `AGENTMESH_<SECTION>_<KEY>` overrides to scalar keys of the known sections.
/// The value is read as a TOML value when it parses as one (`8080`, `true`, `["a"]`), else
/// as a string.
pub fn apply_env_overrides(table: &mut toml::Table, env: impl Iterator<Item = (String, String)>) {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            continue;
        };
        let key = &rest[section.len() + 1..];
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = entry {
            t.insert(key.to_owned(), value);
        }
    }
}
