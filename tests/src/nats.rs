//! A real `nats-server` on an ephemeral port in a temp dir, for `[cluster]` tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::ChildGuard;
use crate::PATIENCE;

/// The nats-server binary, or `None` (with the reason printed) when it is not installed.
/// With `AGENTMESH_REQUIRE_EXTERNAL=1` (CI) a missing nats-server panics instead.
pub fn binary() -> Option<PathBuf> {
    crate::external_binary(
        &[
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ],
        "nats-server",
        "skipping this cluster test (.ci/run installs it)",
    )
}

/// A running nats-server (killed on drop); [`NatsServer::stop`] and
/// [`NatsServer::restart`] keep its port.
pub struct NatsServer {
    binary: PathBuf,
    dir: PathBuf,
    /// Where clients connect.
    pub addr: SocketAddr,
    child: ChildGuard,
    starts: u32,
}

impl NatsServer {
    /// Starts nats-server on a free loopback port with its files under `dir`; `None` when
    /// it is not installed (see [`binary`]).
    pub async fn start(dir: &Path) -> Option<NatsServer> {
        let binary = binary()?;
        let dir = dir.join("nats");
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = NatsServer {
            binary,
            dir,
            addr: "127.0.0.1:0".parse().unwrap(),
            child: ChildGuard(None),
            starts: 0,
        };
        server.launch().await;
        Some(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    async fn launch(&mut self) {
        self.starts += 1;
        let log_path = self.dir.join(format!("nats-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).unwrap();
        // -1 lets the server choose (0 would mean its default, 4222); its log names the
        // port, which is then kept for restarts (a client reconnects to the same URL).
        let port = match self.addr.port() {
            0 => "-1".to_owned(),
            p => p.to_string(),
        };
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &port, "-l"])
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = ChildGuard(Some(child));
        self.addr = self
            .child
            .wait_for_log("nats-server", &log_path, |l| {
                if !l.contains("Listening for client connections on") {
                    return None;
                }
                l.rsplit(' ').next()?.trim().parse::<SocketAddr>().ok()
            })
            .await;
    }

    /// Stops the server (SIGKILL: clients see the link drop).
    pub async fn stop(&mut self) {
        self.child.signal("-9");
        self.child.wait_exit(PATIENCE).await;
        self.child = ChildGuard(None);
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        assert!(self.child.0.is_none(), "still running");
        self.launch().await;
    }
}
