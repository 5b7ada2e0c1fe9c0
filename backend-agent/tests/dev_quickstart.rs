//! `backend-agent dev` as a user runs it: a real process in a fresh directory, a connected
//! agent listed by the API, the printed token working, Ctrl-C stopping both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

#[test]
fn dev_starts_a_backend_and_a_connected_agent_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let (http, hub) = (free_addr(), free_addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend-agent"))
        .args([
            "dev",
            "--http",
            &http.to_string(),
            "--hub",
            &hub.to_string(),
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let token_file = dir.path().join("dev-state/admin.token");
    let listed = loop {
        assert!(Instant::now() < deadline, "agent never listed");
        if let Ok(token) = std::fs::read_to_string(&token_file) {
            if let Some((200, body)) = get(http, "/api/v1/agents/dev-agent-01", Some(token.trim()))
            {
                if body.contains("\"connected\":true") {
                    break body;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(listed.contains("\"echo\""), "{listed}");
    assert_eq!(get(http, "/health", None).map(|r| r.0), Some(200));
    assert_eq!(get(http, "/api/v1/agents", None).map(|r| r.0), Some(401));

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let stopped = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < stopped, "dev did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        out.contains("export TOKEN=") && out.contains("curl"),
        "{out}"
    );
    assert!(dir.path().join("dev-state/backend.db").exists());
    // The agent's state (and its audit log) under `dev-state/agent-state`, resolved once.
    assert!(dir
        .path()
        .join("dev-state/agent-state/gateway-audit.log")
        .exists());
    assert!(!dir.path().join("dev-state/dev-state").exists());
}
