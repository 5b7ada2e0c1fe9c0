//! Real nginx in a temp dir with the repository's `nginx/agentmesh.conf`, and per-client
//! TCP relays that give each test client its own loopback source address (nginx and the hub
//! limit per client address, and every in-process client would otherwise be 127.0.0.1).

use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_certs::{Issued, Validity};
use tokio::net::{TcpListener, TcpSocket};

use crate::backend::HubOptions;
use crate::{Pki, TestHub};

/// The nginx binary, or `None` (with the reason printed) when it is not installed. With
/// `AGENTMESH_REQUIRE_EXTERNAL=1` (CI) a missing nginx panics instead.
pub fn binary() -> Option<PathBuf> {
    crate::external_binary(
        &["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"],
        "nginx",
        "skipping this front-door test (.ci/run installs it)",
    )
}

/// nginx's own mesh identity towards the hub (`<pki>/nginx`) and the public front-door
/// certificate it serves (`<pki>/front`, CN localhost, SAN 127.0.0.1).
pub fn front_door_certs(pki: &Pki) -> (Issued, Issued) {
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
    (proxy, front)
}

/// Renders the shipped config for this test's ports and files; panics if a line it must
/// rewrite is missing, so a changed template fails loudly instead of binding port 443.
pub fn render(dir: &Path, listen: SocketAddr, hub: SocketAddr, api: SocketAddr) -> PathBuf {
    render_edited(dir, listen, hub, api, &|s| s)
}

/// Like [`render`], with `edit` applied to the rendered server block (to break it on purpose).
pub fn render_edited(
    dir: &Path,
    listen: SocketAddr,
    hub: SocketAddr,
    api: SocketAddr,
    edit: &dyn Fn(String) -> String,
) -> PathBuf {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../nginx/agentmesh.conf"),
    )
    .unwrap();
    let d = dir.display();
    let mut server = template;
    for (from, to) in [
        ("listen 443 ssl;", format!("listen {listen} ssl;")),
        ("listen [::]:443 ssl;", String::new()),
        ("server 127.0.0.1:8080;", format!("server {api};")),
        ("https://127.0.0.1:8081", format!("https://{hub}")),
        ("/etc/agentmesh/tls/front/", format!("{d}/front/")),
        ("/etc/agentmesh/tls/nginx/", format!("{d}/nginx/")),
        ("/etc/agentmesh/tls/ca.pem", format!("{d}/ca/ca.pem")),
    ] {
        assert!(server.contains(from), "nginx/agentmesh.conf lost {from:?}");
        server = server.replace(from, &to);
    }
    write_conf(dir, &edit(server))
}

/// Renders the shipped `nginx/cluster.conf` for this test: the API upstream is `apis` and the
/// hub upstream is `hubs` (one `server` line each, the template's own options kept), the
/// listen address and the files as in [`render`].
pub fn render_cluster(
    dir: &Path,
    listen: SocketAddr,
    hubs: &[SocketAddr],
    apis: &[SocketAddr],
) -> PathBuf {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../nginx/cluster.conf"),
    )
    .unwrap();
    let d = dir.display();
    let mut server = String::new();
    let (mut api_done, mut hub_done) = (false, false);
    for line in template.lines() {
        let upstream = |port: &str, done: &mut bool, to: &[SocketAddr], out: &mut String| {
            let t = line.trim_start();
            if !(t.starts_with("server 10.0.0.") && t.contains(port)) {
                return false;
            }
            let options = t.split_once(' ').map(|(_, rest)| rest).unwrap_or_default();
            let options = options.split_once(' ').map(|(_, o)| o).unwrap_or(";");
            if !std::mem::replace(done, true) {
                for addr in to {
                    out.push_str(&format!("    server {addr} {options}\n"));
                }
            }
            true
        };
        if upstream(":8080 ", &mut api_done, apis, &mut server)
            || upstream(":8081 ", &mut hub_done, hubs, &mut server)
        {
            continue;
        }
        server.push_str(line);
        server.push('\n');
    }
    assert!(
        api_done && hub_done,
        "nginx/cluster.conf lost its upstream servers"
    );
    for (from, to) in [
        ("listen 443 ssl;", format!("listen {listen} ssl;")),
        ("listen [::]:443 ssl;", String::new()),
        ("/etc/agentmesh/tls/front/", format!("{d}/front/")),
        ("/etc/agentmesh/tls/nginx/", format!("{d}/nginx/")),
        ("/etc/agentmesh/tls/ca.pem", format!("{d}/ca/ca.pem")),
    ] {
        assert!(server.contains(from), "nginx/cluster.conf lost {from:?}");
        server = server.replace(from, &to);
    }
    write_conf(dir, &server)
}

/// Wraps `server` (the shipped file's http-level content) in a top-level config for `dir`.
fn write_conf(dir: &Path, server: &str) -> PathBuf {
    let d = dir.display();
    let conf = format!(
        "user root;\nworker_processes 1;\nworker_rlimit_nofile 8192;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n  fastcgi_temp_path {d}/tmp-fcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n{server}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// A running nginx in its own process group; dropped = SIGQUIT to the group, then SIGKILL.
pub struct Nginx {
    child: Child,
    /// Where it listens (TLS).
    pub listen: SocketAddr,
    /// Its error log.
    pub error_log: PathBuf,
}

impl Nginx {
    /// Starts nginx for `hub`/`api` with the config rendered under `dir` and waits until it
    /// accepts connections. A port taken between choosing and binding is retried.
    pub async fn start(binary: &Path, dir: &Path, hub: SocketAddr, api: SocketAddr) -> Nginx {
        Self::start_edited(binary, dir, hub, api, &|s| s).await
    }

    /// Like [`Nginx::start`] with [`render_edited`]'s `edit`.
    pub async fn start_edited(
        binary: &Path,
        dir: &Path,
        hub: SocketAddr,
        api: SocketAddr,
        edit: &dyn Fn(String) -> String,
    ) -> Nginx {
        Self::start_rendered(binary, dir, &|listen| {
            render_edited(dir, listen, hub, api, edit)
        })
        .await
    }

    /// nginx with the shipped `nginx/cluster.conf` in front of several replicas
    /// ([`render_cluster`]).
    pub async fn start_cluster(
        binary: &Path,
        dir: &Path,
        hubs: &[SocketAddr],
        apis: &[SocketAddr],
    ) -> Nginx {
        Self::start_rendered(binary, dir, &|listen| {
            render_cluster(dir, listen, hubs, apis)
        })
        .await
    }

    async fn start_rendered(
        binary: &Path,
        dir: &Path,
        render: &dyn Fn(SocketAddr) -> PathBuf,
    ) -> Nginx {
        use std::os::unix::process::CommandExt;
        for _ in 0..5 {
            let listen = StdListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let conf = render(listen);
            let out = Command::new(binary)
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
            let child = Command::new(binary)
                .args(["-g", "daemon off;", "-c"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap();
            let mut nginx = Nginx {
                child,
                listen,
                error_log: dir.join("nginx-error.log"),
            };
            let deadline = Instant::now() + crate::PATIENCE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = nginx.child.try_wait() {
                    break; // the port was taken: choose another
                }
                if tokio::net::TcpStream::connect(listen).await.is_ok() {
                    return nginx;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(nginx);
        }
        panic!("nginx did not start; see {}/nginx-error.log", dir.display());
    }

    /// The error log so far.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-QUIT");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("-KILL");
        let _ = self.child.wait();
    }
}

/// A TCP relay on 127.0.0.1 that forwards each connection to `target` from the next of
/// `sources` (round robin), so the far end sees those client addresses. Runs until the
/// test's runtime ends.
pub async fn relay(target: SocketAddr, sources: Vec<IpAddr>) -> SocketAddr {
    assert!(!sources.is_empty());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut next = 0usize;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let source = sources[next % sources.len()];
            next = next.wrapping_add(1);
            tokio::spawn(async move {
                let Ok(socket) = TcpSocket::new_v4() else {
                    return;
                };
                if socket.bind(SocketAddr::new(source, 0)).is_err() {
                    return;
                }
                let Ok(mut outbound) = socket.connect(target).await else {
                    return;
                };
                let _ = outbound.set_nodelay(true);
                let _ = inbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    addr
}

/// The `n`th distinct loopback client address of a test (127.1.x.y, never 127.0.0.1).
pub fn client_ip(n: usize) -> IpAddr {
    IpAddr::from([
        127,
        1 + (n / 62_500) as u8,
        ((n / 250) % 250) as u8,
        (n % 250 + 1) as u8,
    ])
}

/// A backend set up for the shipped nginx config: nginx's pin (`proxy`) trusted for
/// forwarded certificates, and 127.0.0.1 (where nginx connects from) as the hub's and the
/// API's trusted proxy address. `options.limits` empty = the default `[limits]`.
pub async fn hub_behind_nginx(
    pki: &Pki,
    enrolled: &[(&str, &str)],
    proxy: &Issued,
    options: HubOptions,
) -> TestHub {
    let mut hub = TestHub::start_with(pki, enrolled, options).await;
    let text = std::fs::read_to_string(&hub.config_path)
        .unwrap()
        .replace(
            "handshake_timeout_secs",
            &format!(
                "trusted_proxy_pins = [\"{}\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\nhandshake_timeout_secs",
                proxy.pin
            ),
        )
        .replace("[http]\n", "[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n");
    std::fs::write(&hub.config_path, text).unwrap();
    hub.restart_from_file().await;
    hub
}
