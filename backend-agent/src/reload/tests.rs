use std::path::Path;

use super::keep_restart_only;
use crate::config::BackendConfig;

fn config(text: &str) -> BackendConfig {
    BackendConfig::from_toml(text, "test.toml", Path::new("/etc"), std::iter::empty())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn restart_only_settings_keep_their_running_value_and_are_named() {
    let old = config("[http]\nlisten = \"127.0.0.1:1\"\n[limits]\nagent_burst = 5\n");
    let mut new = config(
        "[http]\nlisten = \"127.0.0.1:2\"\n[store]\npath = \"/x.db\"\n[limits]\nagent_burst = 9\n",
    );
    let differ = keep_restart_only(&old, &mut new);
    assert_eq!(differ, ["http.listen", "store"]);
    assert_eq!(new.http.listen, old.http.listen);
    assert_eq!(new.store, old.store);
    assert_eq!(new.limits.agent_burst, 9, "limits are reloadable");
}

#[test]
fn a_bad_log_filter_is_refused_by_validation() {
    let err = BackendConfig::from_toml(
        "[log]\nlevel = \"info,[\"\n",
        "test.toml",
        Path::new("/etc"),
        std::iter::empty(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("log.level"), "{err}");
}
