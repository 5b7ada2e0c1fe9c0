//! The front door: real nginx terminating TLS, verifying the agent's certificate and
//! forwarding it to the hub, which trusts the header only from nginx's pinned certificate.
//! Skipped (with a message) when nginx is not installed; `.ci/run` installs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use agentmesh_e2e::backend::{HubOptions, VIEWER_TOKEN};
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use mesh_certs::Validity;

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

struct Nginx(Child);
impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Renders the repository's `nginx/agentmesh.conf` for this test's ports and files.
fn render_conf(dir: &Path, listen: SocketAddr, hub: SocketAddr, api: SocketAddr) -> PathBuf {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../nginx/agentmesh.conf"),
    )
    .unwrap();
    let d = dir.display();
    let server = template
        .replace("listen 443 ssl;", &format!("listen {listen} ssl;"))
        .replace("server 127.0.0.1:8080;", &format!("server {api};"))
        .replace("https://127.0.0.1:8081", &format!("https://{hub}"))
        .replace("/etc/agentmesh/tls/front/", &format!("{d}/front/"))
        .replace("/etc/agentmesh/tls/nginx/", &format!("{d}/nginx/"))
        .replace("/etc/agentmesh/tls/ca.pem", &format!("{d}/ca/ca.pem"));
    let conf = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n  fastcgi_temp_path {d}/tmp-fcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n{server}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

#[tokio::test]
async fn agent_connects_through_nginx_and_the_hub_checks_the_forwarded_certificate() {
    init_logging();
    let Some(nginx) = nginx_binary() else {
        eprintln!("nginx not installed: skipping the front-door test (.ci/run installs it)");
        return;
    };
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    // nginx's own mesh identity towards the hub, and the public certificate it serves.
    let proxy = pki
        .ca
        .issue_agent("nginx-front-door", Validity::days(2))
        .unwrap();
    proxy.save(&pki.path().join("nginx")).unwrap();
    let front = pki
        .ca
        .issue_server("localhost", &["127.0.0.1".to_owned()], Validity::days(2))
        .unwrap();
    front.save(&pki.path().join("front")).unwrap();

    let options = HubOptions {
        extra: String::new(),
        ..HubOptions::default()
    };
    let mut hub = TestHub::start_with(&pki, &[("edge-01", &edge.pin)], options).await;
    // Restart with nginx's pin trusted as a proxy.
    let text = std::fs::read_to_string(&hub.config_path).unwrap().replace(
        "handshake_timeout_secs",
        &format!(
            "trusted_proxy_pins = [\"{}\"]\nhandshake_timeout_secs",
            proxy.pin
        ),
    );
    std::fs::write(&hub.config_path, text).unwrap();
    hub.restart_from_file().await;

    let listen = free_port();
    let conf = render_conf(pki.path(), listen, hub.hub, hub.http);
    let out = Command::new(&nginx)
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
    let _nginx = Nginx(
        Command::new(&nginx)
            .args(["-g", "daemon off;", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("nginx listening", PATIENCE, || async {
        tokio::net::TcpStream::connect(listen).await.is_ok()
    })
    .await;

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
