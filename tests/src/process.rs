//! The real binaries as child processes: [`BackendProcess`] runs `backend-agent` from a config
//! file, binds `:0` and reads the ports it reports, and can be killed with SIGKILL — the only
//! honest way to claim crash safety (an in-process abort leaves tasks and writers alive).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::PATIENCE;

/// The workspace's binaries, brought up to date once per test process: `cargo test -p
/// agentmesh-e2e` does not build other packages' binaries, and a stale one would test old
/// code. Under `cargo test --workspace` they are already fresh and this is a quick no-op.
fn built_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test> -> <target>/<profile>/<name>
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join(name);
    BUILT.get_or_init(|| {
        let target = dir.parent().unwrap();
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "--locked",
                "-p",
                "backend-agent",
                "-p",
                "gateway-agent",
                "-p",
                "meshctl",
                "--bins",
            ])
            .arg("--target-dir")
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().unwrap();
        assert!(status.success(), "building the binaries failed");
    });
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// Path of the `backend-agent` binary.
pub fn backend_binary() -> PathBuf {
    built_binary("backend-agent")
}

/// Path of the `gateway-agent` binary.
pub fn gateway_binary() -> PathBuf {
    built_binary("gateway-agent")
}

/// Path of the `meshctl` binary.
pub fn meshctl_binary() -> PathBuf {
    built_binary("meshctl")
}

/// Runs `backend-agent audit verify` over the log at `path`; Err holds its output.
pub fn audit_verify(path: &Path) -> Result<(), String> {
    let out = Command::new(backend_binary())
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "audit verify {} exited {:?}: {}{}",
            path.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaks nothing.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Polls the child's log at `log` until `parse` finds what it waits for in a line;
    /// panics (with the log) when the child exits first or after [`PATIENCE`].
    pub async fn wait_for_log<T>(
        &mut self,
        what: &str,
        log: &Path,
        parse: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(found) = text.lines().find_map(&parse) {
                return found;
            }
            if let Some(status) = self.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{what} exited with {status} before starting:\n{text}");
            }
            assert!(Instant::now() < deadline, "{what} never started:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends `signal` (e.g. "-INT", "-9") with `kill`.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.id().to_string()])
            .status();
    }

    /// Waits for the exit (polling, without blocking the runtime) up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut().expect("child still owned");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real `backend-agent --config FILE` process.
pub struct BackendProcess {
    /// The child (killed on drop).
    pub child: ChildGuard,
    /// Its config file.
    pub config_path: PathBuf,
    /// Where its stdout and stderr (the log) go; kept with the test's evidence.
    pub log_path: PathBuf,
    /// Operator API address it reported.
    pub http: SocketAddr,
    /// Hub address it reported.
    pub hub: SocketAddr,
    /// How many times it has been started (names the log files).
    starts: u32,
}

impl BackendProcess {
    /// Starts the binary from `config_path`. If the config's listen ports are 0, the chosen
    /// ports are read from the log and written back, so a restart comes back on the same ones.
    pub async fn start(config_path: &Path) -> BackendProcess {
        let mut p = BackendProcess {
            child: ChildGuard(None),
            config_path: config_path.to_owned(),
            log_path: PathBuf::new(),
            http: "127.0.0.1:0".parse().unwrap(),
            hub: "127.0.0.1:0".parse().unwrap(),
            starts: 0,
        };
        p.launch().await;
        p
    }

    async fn launch(&mut self) {
        self.starts += 1;
        let dir = self.config_path.parent().unwrap();
        self.log_path = dir.join(format!("backend-process-{}.log", self.starts));
        let log = std::fs::File::create(&self.log_path).unwrap();
        let child = Command::new(backend_binary())
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            // The log goes to stdout (tracing's default), errors to stderr: keep both.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = ChildGuard(Some(child));
        let (http, hub) = self.reported_addrs().await;
        self.http = http;
        self.hub = hub;
        pin_ports(&self.config_path, http, hub);
    }

    /// Waits for the "backend started" line and its `http=` and `hub=` fields.
    async fn reported_addrs(&mut self) -> (SocketAddr, SocketAddr) {
        let log = self.log_path.clone();
        self.child
            .wait_for_log("backend", &log, |l| {
                if !l.contains("backend started") {
                    return None;
                }
                Some((field(l, "http=")?, field(l, "hub=")?))
            })
            .await
    }

    /// SIGKILL: no drain, no flush, no destructor runs — a real crash.
    pub async fn kill_9(&mut self) {
        self.child.signal("-9");
        self.child.wait_exit(PATIENCE).await;
        self.child = ChildGuard(None);
    }

    /// Starts the binary again on the same ports (after [`Self::kill_9`]).
    pub async fn restart(&mut self) {
        assert!(self.child.0.is_none(), "still running");
        self.launch().await;
    }

    /// The `[audit].path` of the config.
    pub fn audit_path(&self) -> PathBuf {
        self.config_path.parent().unwrap().join("audit.log")
    }
}

/// The address after `key` up to the next whitespace (ANSI colour codes stripped).
fn field(line: &str, key: &str) -> Option<SocketAddr> {
    let clean: String = strip_ansi(line);
    let at = clean.find(key)? + key.len();
    clean[at..].split_whitespace().next()?.parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip "ESC [ ... letter".
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Rewrites `[http].listen` and `[hub].listen` to the given addresses.
fn pin_ports(config_path: &Path, http: SocketAddr, hub: SocketAddr) {
    let text = std::fs::read_to_string(config_path).unwrap();
    let mut doc: toml::Table = text.parse().unwrap();
    for (table, addr) in [("http", http), ("hub", hub)] {
        let t = doc
            .get_mut(table)
            .and_then(toml::Value::as_table_mut)
            .unwrap_or_else(|| panic!("config has no [{table}]"));
        t.insert("listen".into(), toml::Value::String(addr.to_string()));
    }
    std::fs::write(config_path, toml::to_string(&doc).unwrap()).unwrap();
}
