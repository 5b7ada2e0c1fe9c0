//! Every example config parses; every file in `tests/invalid-configs/` fails naming its key;
//! the binary exits 64 on a bad config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use backend_agent::config::BackendConfig;

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/backend.toml");
    let config = BackendConfig::load_with_env(&path, std::iter::empty()).unwrap();
    assert_eq!(config.agents[0].id, "edge-01");
    assert!(config.hub.cert.is_absolute());
}

#[test]
fn every_invalid_config_is_refused_with_file_and_key() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid-configs");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let err = BackendConfig::load_with_env(&path, std::iter::empty())
            .expect_err(&format!("{} should be refused", path.display()))
            .to_string();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            err.contains(&file),
            "{file}: error does not name the file: {err}"
        );
        n += 1;
    }
    assert!(n >= 10);
}

#[test]
fn the_binary_exits_64_on_a_bad_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid-configs/unknown-key.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_backend-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown_key"), "{stderr}");
}

#[test]
fn token_new_prints_a_token_and_its_config_lines() {
    let out = Command::new(env!("CARGO_BIN_EXE_backend-agent"))
        .args(["token", "new", "--name", "ops", "--role", "operator"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap();
    assert!(stdout.contains(&backend_agent::auth::token_sha256_hex(token)));
    assert!(stdout.contains("role = \"operator\""));
}
