//! Every example config parses; every file under `tests/invalid-configs/` fails, naming the key
//! given on its first line (`# expect: KEY`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use gateway_agent::GatewayConfig;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn example_config_parses() {
    let path = crate_dir().join("examples/gateway.toml");
    let config = GatewayConfig::load_with_env(&path, no_env()).unwrap();
    assert_eq!(config.agent.id, "edge-01");
    assert_eq!(config.agent.labels["region"], "eu");
    assert_eq!(
        config.agent.health_listen,
        Some("127.0.0.1:8443".parse().unwrap())
    );
    // Relative TLS paths are relative to the file's directory.
    assert_eq!(config.outbound.ca, crate_dir().join("examples/tls/ca.pem"));
    assert_eq!(
        config.audit_path(),
        Path::new("/var/lib/agentmesh-gateway/gateway-audit.log")
    );
    let names: Vec<_> = config
        .advertised_verbs()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        names,
        [
            "ping",
            "sysinfo",
            "create_panel_user",
            "restart_service",
            "disk_usage"
        ]
    );
}

#[test]
fn every_example_config_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(crate_dir().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            GatewayConfig::load_with_env(&path, no_env())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1);
}

#[test]
fn every_invalid_config_fails_naming_the_key() {
    let dir = crate_dir().join("tests/invalid-configs");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 20, "only {} invalid configs", paths.len());
    let mut failures = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: KEY`", path.display()))
            .trim()
            .to_owned();
        match GatewayConfig::load_with_env(path, no_env()) {
            Ok(_) => failures.push(format!("{}: loaded but must fail", path.display())),
            Err(e) => {
                let message = e.to_string();
                let file = path.display().to_string();
                if !message.starts_with(&format!("{file}: ")) {
                    failures.push(format!("does not start with the file name: {message}"));
                }
                if !message.contains(&expect) {
                    failures.push(format!("expected key {expect:?} in: {message}"));
                }
                if message.contains('\n') {
                    failures.push(format!("not one line: {message:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
