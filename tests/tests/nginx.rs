//! The front door: real nginx terminating TLS, verifying the agent's certificate and
//! forwarding it to the hub, which trusts the header only from nginx's pinned certificate.
//! Skipped (with a message) when nginx is not installed, except under
//! `AGENTMESH_REQUIRE_EXTERNAL=1` (set by `.ci/run`, which installs it): then it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentmesh_e2e::backend::{HubOptions, VIEWER_TOKEN};
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};

/// nginx on PATH, or in the sbin directories Debian and source builds use (not always on a
/// user's PATH).
fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from))
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// nginx in its own process group. Dropping it sends SIGQUIT to the group (a graceful stop
/// that takes the worker down too), then SIGKILL to the group if it lingers: killing only the
/// master would orphan the worker, which keeps the port.
struct Nginx(Child);

impl Nginx {
    /// Signals the whole group; false if `kill` could not be run or refused.
    fn signal_group(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([signal, "--", &format!("-{}", self.0.id())])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.signal_group("-QUIT") {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever is left of the group (a stuck master or an orphaned worker); without a
        // usable `kill`, at least the master, so the wait below cannot hang.
        if !self.signal_group("-KILL") {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago (nginx cannot report a `:0` port; the caller retries
/// with a new one if nginx fails to bind it).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Renders the repository's `nginx/agentmesh.conf` for this test's ports and files (one
/// renderer for every nginx test: it fails loudly if the template lost a line it rewrites).
fn render_conf(dir: &Path, listen: SocketAddr, hub: SocketAddr, api: SocketAddr) -> PathBuf {
    agentmesh_e2e::nginx::render(dir, listen, hub, api)
}

/// Starts nginx on a fresh port, retrying with another port if it exits (the port was taken
/// between `free_port` and nginx's bind). Returns nginx and the port it listens on.
async fn start_nginx(nginx: &Path, pki: &Pki, hub: &TestHub) -> (Nginx, SocketAddr) {
    for _ in 0..5 {
        let listen = free_port();
        let conf = render_conf(pki.path(), listen, hub.hub, hub.http);
        let out = Command::new(nginx)
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut proc = Nginx(
            Command::new(nginx)
                .args(["-g", "daemon off;", "-c"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                return (proc, listen);
            }
            if let Ok(Some(status)) = proc.0.try_wait() {
                eprintln!("nginx exited ({status}) on {listen}; retrying on another port");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nginx never listened on {listen}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("nginx could not start (see nginx-error.log in the kept test directory)");
}

#[tokio::test]
async fn agent_connects_through_nginx_and_the_hub_checks_the_forwarded_certificate() {
    init_logging();
    let Some(nginx) = nginx_binary() else {
        assert!(
            std::env::var("AGENTMESH_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "AGENTMESH_REQUIRE_EXTERNAL=1 but nginx is not installed"
        );
        eprintln!("nginx not installed: skipping the front-door test (.ci/run installs it)");
        return;
    };
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    // nginx's own mesh identity towards the hub, and the public certificate it serves.
    let (proxy, _front) = agentmesh_e2e::nginx::front_door_certs(&pki);

    // nginx's pin is trusted as a proxy.
    let options = HubOptions {
        extra: format!("[hub]\ntrusted_proxy_pins = [\"{}\"]\n", proxy.pin),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &[("edge-01", &edge.pin)], options).await;
    let (_nginx, listen) = start_nginx(&nginx, &pki, &hub).await;

    // The agent dials nginx (its certificate checked against the CA) and pins the hub's key,
    // which signs `welcome` behind nginx.
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        listen,
        &[&hub.server_pin],
        "",
    );
    let agent = TestAgent::start(cfg);
    eventually("edge-01 connected through nginx", PATIENCE, || async {
        hub.is_connected("edge-01")
    })
    .await;
    let view = hub.backend().registry.get("edge-01").unwrap();
    assert_eq!(
        view.pin.as_deref(),
        Some(edge.pin.as_str()),
        "the hub saw the forwarded agent certificate"
    );

    // The API is reachable through the same front door.
    let resp = http::get_tls(
        listen,
        pki.ca.cert_pem(),
        "/api/v1/agents",
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["agents"][0]["id"], "edge-01");

    agent.stop().await;
    hub.stop().await;
}
