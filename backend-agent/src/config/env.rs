//! The backend's `AGENTMESH_<SECTION>_<KEY>` environment overrides (mechanism in
//! [`agentmesh_daemon::env`]): any key of the sections below, read as a TOML value when it
//! parses as one (`8080`, `true`, `["a"]`), else as a string. Unknown keys are refused when the
//! table is deserialised (`deny_unknown_fields`).

use agentmesh_daemon::env::{Keys, Kind, OverrideError, Overrides};

pub use agentmesh_daemon::env::ENV_PREFIX;

const OVERRIDES: Overrides = Overrides(&[
    ("http", Keys::Any(Kind::Toml)),
    ("hub", Keys::Any(Kind::Toml)),
    ("store", Keys::Any(Kind::Toml)),
    ("audit", Keys::Any(Kind::Toml)),
    ("limits", Keys::Any(Kind::Toml)),
    ("ca", Keys::Any(Kind::Toml)),
]);

/// Applies `AGENTMESH_<SECTION>_<KEY>` overrides from `env` to `table`.
pub fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(), OverrideError> {
    OVERRIDES.apply(table, env).map(|_| ())
}
