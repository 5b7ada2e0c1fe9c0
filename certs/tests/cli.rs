//! Runs the real `mesh-certs` binary the way an operator would.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn mesh_certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-certs"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn init_issue_pin_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let agent = tmp.path().join("agent");
    let hub = tmp.path().join("hub");

    let out = mesh_certs(&["init-ca", "--out", s(&ca)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&ca.join("ca-key.pem")), 0o600);
    assert!(ca.join("ca.pem").is_file());

    // A second init must not clobber the CA key.
    let key_before = fs::read(ca.join("ca-key.pem")).unwrap();
    let out = mesh_certs(&["init-ca", "--out", s(&ca), "--cn", "other"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(fs::read(ca.join("ca-key.pem")).unwrap(), key_before);

    let out = mesh_certs(&[
        "issue-agent",
        "--ca",
        s(&ca),
        "--id",
        "web-01",
        "--out",
        s(&agent),
        "--days",
        "30",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pin = stdout(&out).lines().last().unwrap().to_owned();
    assert!(pin.starts_with("sha256//") && pin.len() == 52, "{pin}");
    assert_eq!(mode(&agent.join("key.pem")), 0o600);
    assert_eq!(
        fs::read(agent.join("ca.pem")).unwrap(),
        fs::read(ca.join("ca.pem")).unwrap()
    );

    let out = mesh_certs(&["pin", s(&agent.join("cert.pem"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{pin}\n"));

    let out = mesh_certs(&["inspect", s(&agent.join("cert.pem"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("subject: CN=web-01\n"), "{text}");
    assert!(text.contains("ext_key_usage: clientAuth\n"), "{text}");
    assert!(text.contains("status: valid\n"), "{text}");
    assert!(text.contains(&format!("pin: {pin}")), "{text}");

    let out = mesh_certs(&[
        "issue-server",
        "--ca",
        s(&ca),
        "--name",
        "hub.local",
        "--san",
        "127.0.0.1",
        "--san",
        "localhost",
        "--out",
        s(&hub),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hub_pin = stdout(&out).trim().to_owned();
    let text = stdout(&mesh_certs(&["inspect", s(&hub.join("cert.pem"))]));
    assert!(
        text.contains("sans: hub.local, 127.0.0.1, localhost\n"),
        "{text}"
    );
    assert!(text.contains(&format!("pin: {hub_pin}")), "{text}");
    assert_eq!(mode(&hub.join("key.pem")), 0o600);
}

#[test]
fn usage_errors_exit_64_and_runtime_errors_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");

    for args in [
        &[][..],
        &["frobnicate"],
        &[
            "issue-agent",
            "--ca",
            "x",
            "--id",
            "no spaces",
            "--out",
            "y",
        ],
        &[
            "issue-agent",
            "--ca",
            "x",
            "--id",
            "a",
            "--out",
            "y",
            "--days",
            "-3",
        ],
        &["pin"],
    ] {
        let res = mesh_certs(args);
        assert_eq!(res.status.code(), Some(64), "{args:?}: {}", stderr(&res));
    }

    let res = mesh_certs(&["--help"]);
    assert_eq!(res.status.code(), Some(0));
    assert!(stdout(&res).contains("issue-agent"));

    // Missing CA directory: a runtime error that names the file.
    let missing = tmp.path().join("no-ca");
    let res = mesh_certs(&[
        "issue-agent",
        "--ca",
        s(&missing),
        "--id",
        "a",
        "--out",
        s(&out),
    ]);
    assert_eq!(res.status.code(), Some(1));
    assert!(stderr(&res).contains("no-ca/ca.pem"), "{}", stderr(&res));
    assert!(!out.exists());

    let junk = tmp.path().join("junk.pem");
    fs::write(&junk, "hello").unwrap();
    let res = mesh_certs(&["pin", s(&junk)]);
    assert_eq!(res.status.code(), Some(1));
    assert!(stderr(&res).contains("junk.pem"), "{}", stderr(&res));
}
