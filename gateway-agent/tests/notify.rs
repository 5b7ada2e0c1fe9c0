//! systemd readiness end to end: the real binary, started with `NOTIFY_SOCKET` (set on the
//! child only, never in the test process), sends `READY=1` once it is up and `STOPPING=1` on
//! SIGTERM, then exits 0.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::Pki;

/// Kills the agent if the test fails before it exits on its own.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next datagram other than a `STATUS=` line (those come every few seconds), or a
/// failure after a generous deadline (never a hang).
fn next_message(socket: &UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        let n = socket
            .recv(&mut buf)
            .expect("no notification from the agent");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !msg.starts_with("STATUS=") {
            return msg;
        }
    }
}

#[test]
fn ready_then_stopping_reach_the_notify_socket() {
    let pki = Pki::new("edge-01");
    // Port 1: nothing listens, so the agent keeps retrying until it is told to stop.
    let _ = pki.config(1, &[&pki.server.pin], "");
    let socket_path = pki.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gateway-agent"))
        .arg("--config")
        .arg(pki.path().join("gateway.toml"))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    assert_eq!(next_message(&socket), "READY=1\n");
    let pid = Pid::from_raw(i32::try_from(guard.0.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(next_message(&socket), "STOPPING=1\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
