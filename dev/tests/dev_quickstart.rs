//! `agentmesh-dev` as a user runs it: a real process in a fresh directory, a connected
//! agent listed by the API, the printed token working, Ctrl-C stopping both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A port that was free a moment ago. `dev` writes its ports into the agent's config, so it
/// cannot bind `:0`; the race with another process is handled by retrying with new ports.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
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

/// The `dev` process: killed on drop (so a failing assertion leaks nothing), its stdout
/// drained by a thread from the start (a full pipe would block it).
struct Dev {
    child: Child,
    stdout: Option<JoinHandle<String>>,
}

impl Dev {
    fn start(dir: &Path, http: SocketAddr, hub: SocketAddr) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentmesh-dev"))
            .args(["--http", &http.to_string(), "--hub", &hub.to_string()])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut pipe = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        });
        Dev {
            child,
            stdout: Some(stdout),
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Everything it printed (after it exited).
    fn output(&mut self) -> String {
        self.stdout.take().unwrap().join().unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's directory, kept (and named) when the test fails, for the post-mortem.
struct Evidence(tempfile::TempDir);

impl Evidence {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Evidence {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!("test failed: evidence kept in {}", self.0.path().display());
        }
    }
}

#[test]
fn dev_starts_a_backend_and_a_connected_agent_and_stops_on_sigint() {
    let tmp = Evidence(tempfile::tempdir().unwrap());
    let mut attempt = 0;
    let (mut dev, http, listed, dir) = loop {
        attempt += 1;
        // A fresh directory per attempt: dev reuses configs it finds, ports included.
        let dir = tmp.path().join(format!("attempt-{attempt}"));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("dev-state/admin.token");
        let (http, hub) = (free_addr(), free_addr());
        let mut dev = Dev::start(&dir, http, hub);
        let deadline = Instant::now() + Duration::from_secs(60);
        let listed = loop {
            if let Some(status) = dev.exited() {
                // Most likely a port taken since free_addr(): try again with new ones.
                assert!(attempt < 3, "dev exited with {status}: {}", dev.output());
                break None;
            }
            assert!(Instant::now() < deadline, "agent never listed");
            if let Ok(token) = std::fs::read_to_string(&token_file) {
                if let Some((200, body)) =
                    get(http, "/api/v1/agents/dev-agent-01", Some(token.trim()))
                {
                    if body.contains("\"connected\":true") {
                        break Some(body);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(body) = listed {
            break (dev, http, body, dir);
        }
    };
    assert!(listed.contains("\"echo\""), "{listed}");
    assert_eq!(get(http, "/health", None).map(|r| r.0), Some(200));
    assert_eq!(get(http, "/api/v1/agents", None).map(|r| r.0), Some(401));

    Command::new("kill")
        .args(["-INT", &dev.child.id().to_string()])
        .status()
        .unwrap();
    let stopped = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = dev.exited() {
            break s;
        }
        assert!(Instant::now() < stopped, "dev did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let out = dev.output();
    assert!(
        out.contains("export TOKEN=") && out.contains("curl"),
        "{out}"
    );
    assert!(dir.join("dev-state/backend.db").exists());
    // The agent's state (and its audit log) under `dev-state/agent-state`, resolved once.
    assert!(dir.join("dev-state/agent-state/gateway-audit.log").exists());
    assert!(!dir.join("dev-state/dev-state").exists());
}
