//! A real PostgreSQL server for a test: `initdb` into a temp dir, `postgres` on an ephemeral
//! loopback port with its socket in that dir, a fresh database per use, stopped (SIGINT, a
//! fast shutdown) and deleted on drop.
//!
//! PostgreSQL refuses to run as root. Running as root (CI), the server runs as the system
//! user [`TEST_USER`], created here with `useradd --system` if missing (`.ci/run` creates it
//! up front), and the temp dir is given to it. Not installed: [`TestPostgres::start`] prints
//! why and returns `None`, or panics under `AGENTMESH_REQUIRE_EXTERNAL=1`.
//!
//! Every call that talks to the server runs on a scoped plain thread: the synchronous
//! `postgres` client owns a tokio runtime, which must not be started inside a test's runtime.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::ChildGuard;
use crate::PATIENCE;

/// The unprivileged system user the server runs as when the tests run as root.
pub const TEST_USER: &str = "agentmesh-test";

/// The superuser role `initdb` creates (trust authentication on loopback).
pub const SUPERUSER: &str = "postgres";

/// The directory holding `initdb` and `postgres`, or `None` with the reason printed (a
/// panic under `AGENTMESH_REQUIRE_EXTERNAL=1`).
pub fn bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
    });
    let found = on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
            .collect();
        // Highest version last ("9" < "15" as text, so compare as numbers).
        versions.sort_by_key(|d| {
            d.parent()
                .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                .unwrap_or(0)
        });
        versions.pop()
    });
    crate::external(
        found,
        "PostgreSQL (initdb, postgres)",
        "skipping this test (.ci/run installs `postgresql`)",
    )
}

/// `(uid, gid)` to run the server as: [`TEST_USER`] (created if missing) when we are root,
/// `None` (ourselves) otherwise.
fn server_identity() -> Option<(u32, u32)> {
    static ID: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *ID.get_or_init(|| {
        if !is_root() {
            return None;
        }
        if lookup_user(TEST_USER).is_none() {
            // Two test processes may race here; the loser's failure is fine if the user exists.
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg(TEST_USER)
                .status();
        }
        let id = lookup_user(TEST_USER)
            .unwrap_or_else(|| panic!("cannot create the system user {TEST_USER} (useradd)"));
        Some(id)
    })
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `(uid, gid)` of `name` from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        let (_, uid, gid) = (f.next()?, f.next()?, f.next()?);
        Some((uid.parse().ok()?, gid.parse().ok()?))
    })
}

/// A running PostgreSQL server in a temp dir; stopped and deleted on drop.
pub struct TestPostgres {
    bin: PathBuf,
    identity: Option<(u32, u32)>,
    child: ChildGuard,
    port: u16,
    databases: AtomicU32,
    dir: TempDir,
}

impl TestPostgres {
    /// Initialises and starts a server, or `None` if PostgreSQL is not installed (see
    /// [`bin_dir`]). Blocks until it accepts connections.
    pub fn start() -> Option<TestPostgres> {
        let bin = bin_dir()?;
        let identity = server_identity();
        // The server's user must reach the dir: a root-only TMPDIR (say under /root) would
        // not do, so as root the dir goes under the world-traversable /tmp.
        let parent = match identity {
            Some(_) => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("agentmesh-pg")
            .tempdir_in(parent)
            .unwrap();
        if let Some((uid, gid)) = identity {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut pg = TestPostgres {
            bin,
            identity,
            child: ChildGuard(None),
            port: 0,
            databases: AtomicU32::new(0),
            dir,
        };
        pg.initdb();
        pg.start_server();
        Some(pg)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.identity {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (stderr), for failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server on a fresh ephemeral port. A port another process took in between
    /// is retried on the next one.
    pub fn start_server(&mut self) {
        for _ in 0..5 {
            if self.try_start(free_port()) {
                return;
            }
        }
        panic!("PostgreSQL never started:\n{}", self.log());
    }

    /// Starts the server again on the port it had (after [`TestPostgres::stop`]), so URLs
    /// handed out before stay valid.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + PATIENCE;
        while !self.try_start(self.port) {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not come back on port {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the server on `port`; `false` if it exited before accepting connections.
    fn try_start(&mut self, port: u16) -> bool {
        assert!(self.child.0.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Throwaway data: durability buys nothing here and costs CI time.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = ChildGuard(Some(child));
        self.port = port;
        if self.wait_ready() {
            return true;
        }
        self.child = ChildGuard(None);
        false
    }

    /// Polls until the server answers; `false` if it exited (a port race).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        let url = self.url(SUPERUSER);
        loop {
            if let Some(child) = self.child.0.as_mut() {
                if child.try_wait().unwrap().is_some() {
                    return false;
                }
            }
            let url = url.clone();
            let up = on_thread(move || postgres::Client::connect(&url, postgres::NoTls).is_ok());
            if up {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections in {PATIENCE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGINT: fast shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.0.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of `database` as the superuser (no password: trust authentication).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{database}?connect_timeout=5",
            self.port
        )
    }

    /// Creates a fresh, empty database and returns its URL.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.execute(SUPERUSER, &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` (one or more statements) in `database`.
    pub fn execute(&self, database: &str, sql: &str) {
        let (url, sql) = (self.url(database), sql.to_owned());
        on_thread(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            client.batch_execute(&sql).unwrap();
        });
    }

    /// The first column of every row of `sql` in the database at `url`, as text.
    pub fn query_strings(url: &str, sql: &str) -> Vec<Option<String>> {
        let (url, sql) = (url.to_owned(), sql.to_owned());
        on_thread(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            client
                .simple_query(&sql)
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
                    _ => None,
                })
                .collect()
        })
    }

    /// The temp dir (owned by the server's user when running as root).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `f` on a plain scoped thread (outside any tokio runtime) and returns its result.
pub fn on_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
