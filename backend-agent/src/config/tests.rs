//! Config parsing and validation tests.
use super::*;

fn parse(text: &str) -> Result<BackendConfig, ConfigError> {
    BackendConfig::from_toml(
        text,
        "backend.toml",
        Path::new("/etc/agentmesh"),
        std::iter::empty(),
    )
}

#[test]
fn empty_file_gets_the_documented_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.http.listen.port(), 8080);
    assert_eq!(c.hub.listen.port(), 8081);
    assert_eq!(c.hub.heartbeat_secs, 20);
    assert_eq!(c.hub.cert, Path::new("/etc/agentmesh/tls/server/cert.pem"));
    assert_eq!(c.store.path, Path::new("/var/lib/agentmesh/backend.db"));
    assert_eq!(c.limits.operator_burst, 40);
}

#[test]
fn unknown_keys_are_refused_with_the_key_named() {
    let err = parse("[hub]\nlisten = \"0.0.0.0:1\"\nbogus = 1\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("backend.toml") && err.contains("bogus"),
        "{err}"
    );
}

#[test]
fn bad_values_name_file_and_key() {
    let err = parse("[[agents]]\nid = \"a\"\npins = [\"md5//x\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("agents[0].pins[0]"), "{err}");
    let err = parse("[[tokens]]\nname = \"t\"\nsha256 = \"zz\"\nrole = \"viewer\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokens[0].sha256"), "{err}");
    let err = parse("[[tokens]]\nname = \"t\"\nsha256 = \"aa\"\nrole = \"root\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("role") || err.contains("root"), "{err}");
}

#[test]
fn env_overrides_apply() {
    let env = [
        ("AGENTMESH_HUB_LISTEN".to_owned(), "127.0.0.1:9".to_owned()),
        ("AGENTMESH_HUB_HEARTBEAT_SECS".to_owned(), "7".to_owned()),
        ("PATH".to_owned(), "/bin".to_owned()),
    ];
    let c = BackendConfig::from_toml("", "f", Path::new("."), env.into_iter()).unwrap();
    assert_eq!(c.hub.listen.port(), 9);
    assert_eq!(c.hub.heartbeat_secs, 7);
}

#[test]
fn history_and_queue_limits_have_defaults_and_agents_may_carry_labels() {
    let c = parse("").unwrap();
    assert_eq!(c.store.retention_days, 30);
    assert_eq!(c.store.max_records, 100_000);
    assert_eq!(c.store.prune_interval_secs, 300);
    assert_eq!(c.limits.max_queue_ttl_ms, 3_600_000);
    assert_eq!(c.limits.result_grace_secs, 30);
    let pin = format!("sha256//{}", "A".repeat(43) + "=");
    let c = parse(&format!(
        "[[agents]]\nid = \"edge-01\"\npins = [\"{pin}\"]\nlabels = {{ region = \"eu\" }}\n"
    ))
    .unwrap();
    assert_eq!(
        c.agents[0].labels.as_ref().and_then(|l| l.get("region")),
        Some(&"eu".to_owned())
    );
    let err = parse("[store]\nprune_interval_secs = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("store.prune_interval_secs"), "{err}");
}

#[test]
fn trusted_proxies_parse_as_cidrs_also_from_the_environment() {
    let pin = format!("sha256//{}", "A".repeat(43) + "=");
    let text = format!(
        "[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n[hub]\ntrusted_proxy_pins = [\"{pin}\"]\ntrusted_proxies = [\"127.0.0.1\"]\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.http.trusted_proxies.len(), 2);
    assert!(c.http.trusted_proxies[0].contains("10.9.8.7".parse().unwrap()));
    assert_eq!(c.hub.trusted_proxies[0].to_string(), "127.0.0.1/32");
    let env = [(
        "AGENTMESH_HTTP_TRUSTED_PROXIES".to_owned(),
        "[\"192.0.2.0/24\"]".to_owned(),
    )];
    let c = BackendConfig::from_toml("", "backend.toml", Path::new("/"), env.into_iter()).unwrap();
    assert_eq!(c.http.trusted_proxies[0].to_string(), "192.0.2.0/24");
    let err = parse("[http]\ntrusted_proxies = [\"10.0.0.0/40\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trusted_proxies") && err.contains("/40"),
        "{err}"
    );
}
