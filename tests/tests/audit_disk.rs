//! Issue 7, "Bounded under abuse": the audit writer on a full filesystem. A real backend
//! process keeps its audit log on a small tmpfs; a filler file fills it; commands are refused
//! 503 `audit_unavailable` (with Retry-After); the filler is deleted; commands work again
//! without a restart; after a clean stop, `audit verify --config` passes: one chain, no gap.
//!
//! Mounting needs root. Without it the test prints why and passes, unless
//! `AGENTMESH_REQUIRE_EXTERNAL` is set (CI), where it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "audit_proc/mod.rs"]
mod audit_proc;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use agentmesh_e2e::{eventually, init_logging, PATIENCE};
use audit_proc::{log_files, text, Setup};

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a `size` tmpfs on a fresh directory, or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("audit-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file must not make the unmount (or the test) hang.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Writes `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![b'x'; 4096];
    // Bounded: a 256k tmpfs is full long before this.
    for _ in 0..100_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    for _ in 0..4096 {
        if f.write_all(b"x").is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

#[tokio::test]
async fn a_full_disk_refuses_commands_then_the_same_chain_resumes_without_a_restart() {
    init_logging();
    let fs = match Tmpfs::mount("256k") {
        Ok(fs) => fs,
        Err(why) if std::env::var_os("AGENTMESH_REQUIRE_EXTERNAL").is_none() => {
            eprintln!(
                "SKIPPED: {why} (needs root; set AGENTMESH_REQUIRE_EXTERNAL to fail instead)"
            );
            return;
        }
        Err(why) => panic!("{why}, and AGENTMESH_REQUIRE_EXTERNAL is set"),
    };
    let log = fs.dir.join("audit.log");
    let log_line = format!("[audit]\npath = \"{}\"", log.display());
    let setup = Setup::new(|text| {
        let start = text.find("[audit]\npath = ").unwrap();
        let end = start + text[start..].find('\n').unwrap() + 1;
        let end = end + text[end..].find('\n').unwrap();
        format!("{}{log_line}{}", &text[..start], &text[end..])
    })
    .await;
    let backend = setup.start_backend().await;
    let agent = setup.connect_agent().await;
    let r = setup.command().await;
    assert_eq!(r.status, 200, "{}", r.body);

    let filler = fs.dir.join("filler");
    fill(&filler);
    // The log's last page may still take a few records; commands are refused once it cannot.
    let mut refused = None;
    for _ in 0..2000 {
        let r = setup.command().await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let refused = refused.expect("commands are refused while the disk is full");
    assert_eq!(
        refused.json()["error"]["code"],
        "audit_unavailable",
        "{}",
        refused.body
    );
    assert!(refused.header("retry-after").is_some(), "{}", refused.body);
    let again = setup.command().await;
    assert_eq!(again.status, 503, "still refused: {}", again.body);
    // A load balancer sees it too.
    let ready = agentmesh_e2e::http::get(setup.http, "/ready", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["audit_writable"], false, "{}", ready.body);

    std::fs::remove_file(&filler).unwrap();
    eventually(
        "commands work again once space is back",
        PATIENCE,
        || async { setup.command().await.status == 200 },
    )
    .await;
    let r = setup.command().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ready = agentmesh_e2e::http::get(setup.http, "/ready", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    agent.stop().await;
    backend.terminate().await;
    let out = setup.verify_config();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "same chain, no gap: {stdout}{stderr}"
    );
    let records: Vec<serde_json::Value> = log_files(&log)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let resumed = records
        .iter()
        .find(|r| r["kind"] == "log_resumed")
        .expect("the outage is recorded in the chain");
    assert!(
        resumed["details"]["refused_durable"].as_u64().unwrap() >= 1,
        "{resumed}"
    );
}
