//! What an operator does around the running system, with the real binaries: offline
//! `backend-agent revoke`, `POST /api/v1/enrollments {pin}`, `gateway-agent` refusing a bad
//! config with exit 64, and `/ready` answering 503 while the store cannot take writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use agentmesh_e2e::backend::{HubOptions, ADMIN_TOKEN, OPERATOR_TOKEN};
use agentmesh_e2e::fleet::create_enrolment;
use agentmesh_e2e::process::{self, BackendProcess};
use agentmesh_e2e::{http, init_logging, raw, Pki, TestHub, PATIENCE};
use serde_json::json;

#[tokio::test]
async fn offline_revoke_keeps_the_agent_out_from_the_next_start() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let config =
        TestHub::write_process_config(&pki, &[("edge-01", &edge.pin)], HubOptions::default());
    let mut backend = BackendProcess::start(&config).await;
    let (session, _) = raw::session(backend.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    drop(session);
    backend.kill_9().await;
    let out = Command::new(process::backend_binary())
        .arg("--config")
        .arg(&config)
        .args(["revoke", "--id", "edge-01"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("revoked 1 pin"), "{stdout}");
    backend.restart().await;
    process::audit_verify(&backend.audit_path()).expect("audit verifies after restart");
    // The static [[agents]] entry is still in the file; the revocation wins.
    let mut c = raw::connect(backend.hub, pki.ca.cert_pem(), &edge)
        .await
        .unwrap();
    let _ = c.send_text(&raw::hello("edge-01", 1).to_string()).await;
    let refused = c.next_or_close(PATIENCE).await;
    let (code, reason) = refused.expect_err("a revoked agent got a session");
    assert_eq!(code, 4004, "{reason}");
}

#[tokio::test]
async fn an_admin_enrols_a_pin_directly_and_that_certificate_connects() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-05");
    let hub = TestHub::start(&pki, &[]).await;
    let body = json!({"agent_id": "edge-05", "pin": edge.pin}).to_string();
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/enrollments",
        Some(OPERATOR_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 403, "only admins enrol: {}", r.body);
    let enrolled =
        create_enrolment(hub.http, &json!({"agent_id": "edge-05", "pin": edge.pin})).await;
    assert_eq!(enrolled["state"], "active", "{enrolled}");
    let (_session, welcome) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-05").await;
    assert_eq!(welcome["type"], "welcome");
    let bad = json!({"agent_id": "edge-06", "pin": "sha256//not-a-pin"}).to_string();
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/enrollments",
        Some(ADMIN_TOKEN),
        Some(&bad),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    hub.stop().await;
}

#[test]
fn gateway_agent_refuses_a_bad_config_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("not-toml.toml", "this is = = not toml"),
        (
            "missing-id.toml",
            "[outbound]\nbackend_url = \"wss://127.0.0.1:1/ws/agent\"\n",
        ),
    ];
    for (name, text) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(process::gateway_binary())
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(process::gateway_binary())
        .arg("--config")
        .arg(dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "a missing config file");
}

/// Holds an exclusive SQLite lock on `db` from another process until stdin closes.
fn lock_store(db: &std::path::Path) -> Option<agentmesh_e2e::process::ChildGuard> {
    let script = "import sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n\
                  c.execute('BEGIN EXCLUSIVE')\n\
                  print('locked', flush=True)\n\
                  sys.stdin.read()\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    Some(agentmesh_e2e::process::ChildGuard(Some(child)))
}

#[tokio::test]
async fn ready_is_503_while_the_store_cannot_take_writes() {
    let pki = Pki::new();
    let hub = TestHub::start(&pki, &[]).await;
    let r = http::get(hub.http, "/ready", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let Some(lock) = lock_store(&hub.dir().join("backend.db")) else {
        assert!(
            std::env::var("AGENTMESH_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "AGENTMESH_REQUIRE_EXTERNAL=1 but python3 is not runnable"
        );
        eprintln!("skipping: python3 (to hold the SQLite lock) is not runnable");
        return;
    };
    // The store's busy timeout runs out while the lock is held: not ready, and says why.
    let r = http::get(hub.http, "/ready", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "not_ready", "{v}");
    assert_eq!(v["store_writable"], false, "{v}");
    drop(lock);
    let r = http::get(hub.http, "/ready", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    hub.stop().await;
}
