//! The binary's exit status for a config it cannot use: 64 (EX_USAGE) with the key named on
//! stderr, both when the file does not load and when its TLS material is unusable, so systemd
//! (`ExecStartPre=check-config`) and scripts see a configuration error, not a crash.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::Pki;

/// Runs the binary; a run that does not exit (it would be dialing) is killed and fails the
/// test instead of hanging it.
fn gateway_agent(args: &[&str], config: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-agent"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway-agent {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (status, stderr)
}

#[test]
fn an_invalid_config_exits_64_naming_the_key() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid-configs");
    for (file, key) in [
        ("huge-pattern.toml", "verbs[0].params.user.pattern"),
        (
            "leading-dash-on-integer.toml",
            "verbs[0].params.user.allow_leading_dash",
        ),
        ("syntax-error.toml", "syntax-error.toml"),
    ] {
        let path = dir.join(file);
        for args in [&[][..], &["check-config"][..]] {
            let (status, stderr) = gateway_agent(args, &path);
            assert_eq!(status.code(), Some(64), "{file} {args:?}: {stderr}");
            assert!(stderr.contains(key), "{file} {args:?}: {stderr}");
        }
    }
}

#[test]
fn a_key_that_cannot_sign_exits_64_before_dialing() {
    let pki = Pki::new("edge-01");
    // A config that loads, with a key rustls would accept but that cannot sign results.
    let _ = pki.config(1, &[&pki.server.pin], "");
    let rsa = Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .expect("openssl must be installed to run this test");
    assert!(rsa.status.success());
    std::fs::write(pki.agent_dir.join("key.pem"), &rsa.stdout).unwrap();
    let (status, stderr) = gateway_agent(&[], &pki.path().join("gateway.toml"));
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("key.pem") && stderr.contains("P-256"),
        "{stderr}"
    );
}
