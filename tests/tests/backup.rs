//! Issue 8, "Backup, restore, upgrade": `backend-agent backup` taken from a real backend
//! process while commands flow, `restore` onto a fresh node (new directory, same ports and
//! certificates), and the restored node serves the command history, keeps an enrolment made
//! through the API (the agent connects) and its audit chain verifies against the checkpoint
//! (`audit verify --config`). `restore` refuses a live node and, without `--force`, files
//! that exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "audit_proc/mod.rs"]
mod audit_proc;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use agentmesh_e2e::backend::{ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::{agent, eventually, http, init_logging, TestAgent, PATIENCE};
use audit_proc::{backend_binary, text, Setup};
use serde_json::json;

fn run(args: &[&str], config: &Path, extra: &[&Path]) -> Output {
    let mut cmd = Command::new(backend_binary());
    cmd.args(args);
    for a in extra {
        cmd.arg(a);
    }
    cmd.arg("--config").arg(config).output().unwrap()
}

async fn commands_listed(http_addr: std::net::SocketAddr) -> Vec<String> {
    let r = http::get(http_addr, "/api/v1/commands?limit=1000", Some(VIEWER_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn backup_while_commands_flow_then_restore_on_a_fresh_node() {
    init_logging();
    let setup = Setup::new(|t| t).await;
    let backend = setup.start_backend().await;
    let agent = setup.connect_agent().await;
    // An enrolment made through the API lives only in the store.
    let (edge2, edge2_dir) = setup.pki.agent("edge-02");
    let body = json!({"agent_id": "edge-02", "pin": edge2.pin, "labels": {"tier": "gold"}});
    let r = http::request(
        setup.http,
        "POST",
        "/api/v1/enrollments",
        Some(ADMIN_TOKEN),
        Some(&body.to_string()),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let mut before = Vec::new();
    for _ in 0..3 {
        let r = setup.command().await;
        assert_eq!(r.status, 200, "{}", r.body);
        before.push(r.json()["command_id"].as_str().unwrap().to_owned());
    }

    // Commands keep flowing while the backup runs.
    let flowing = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicUsize::new(0));
    let (f, d, http_addr) = (flowing.clone(), done.clone(), setup.http);
    let load = tokio::spawn(async move {
        let body = json!({"verb": "echo", "args": {"message": "during"}, "wait": true}).to_string();
        while f.load(Ordering::Relaxed) {
            let r = http::request(
                http_addr,
                "POST",
                "/api/v1/agents/edge-01/commands",
                Some(OPERATOR_TOKEN),
                Some(&body),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            d.fetch_add(1, Ordering::Relaxed);
        }
    });
    eventually("commands flowing", PATIENCE, || {
        let d = done.clone();
        async move { d.load(Ordering::Relaxed) >= 2 }
    })
    .await;
    // Backups until one holds a signed checkpoint (the backend writes one within about a
    // second of records reaching the disk): each must succeed.
    let mut attempt = 0;
    let deadline = std::time::Instant::now() + PATIENCE;
    let (out_dir, manifest) = loop {
        attempt += 1;
        let dir = setup.pki.path().join(format!("backup-{attempt}"));
        let (config, d) = (setup.config.clone(), dir.clone());
        let out = tokio::task::spawn_blocking(move || run(&["backup", "--out"], &config, &[&d]))
            .await
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "backup failed: {stdout}{stderr}");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        if manifest["checkpoint_seq"].as_u64().is_some() {
            break (dir, manifest);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint in any backup: {manifest}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let at_backup = done.load(Ordering::Relaxed);
    eventually("more commands after the backup", PATIENCE, || {
        let d = done.clone();
        async move { d.load(Ordering::Relaxed) >= at_backup + 2 }
    })
    .await;
    flowing.store(false, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        manifest["files"].as_array().unwrap().len() >= 3,
        "{manifest}"
    );

    // Restoring onto the running node is refused, whatever --force says.
    let config = setup.config.clone();
    let live = run(&["restore", "--force", "--from"], &config, &[&out_dir]);
    let (stdout, stderr) = text(&live);
    assert!(!live.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("stop the backend"), "{stderr}");

    agent.stop().await;
    backend.terminate().await;

    // A fresh node: new directory for store and audit, the same ports and certificates.
    let old_dir = setup.config.parent().unwrap().to_path_buf();
    let fresh = tempfile::Builder::new()
        .prefix("fresh-")
        .tempdir_in(setup.pki.path())
        .unwrap();
    let fresh_config = fresh.path().join("backend.toml");
    let text_cfg = std::fs::read_to_string(&setup.config).unwrap().replace(
        &format!("{}/", old_dir.display()),
        &format!("{}/", fresh.path().display()),
    );
    assert!(
        text_cfg.contains(&fresh.path().display().to_string()),
        "{text_cfg}"
    );
    std::fs::write(&fresh_config, text_cfg).unwrap();
    let out = run(&["restore", "--from"], &fresh_config, &[&out_dir]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "restore failed: {stdout}{stderr}");
    // Once files exist, a second restore needs --force.
    let again = run(&["restore", "--from"], &fresh_config, &[&out_dir]);
    let (_, stderr) = text(&again);
    assert!(
        !again.status.success() && stderr.contains("--force"),
        "{stderr}"
    );

    // The restored audit chain verifies and reaches the backed-up checkpoint.
    let verify = run(&["audit", "verify"], &fresh_config, &[]);
    let (stdout, stderr) = text(&verify);
    assert_eq!(verify.status.code(), Some(0), "{stdout}{stderr}");

    let restored = Setup {
        config: fresh_config.clone(),
        ..setup
    };
    let backend = restored.start_backend().await;
    let listed = commands_listed(restored.http).await;
    for id in &before {
        assert!(listed.contains(id), "command {id} lost: {listed:?}");
    }
    assert!(
        listed.len() >= before.len() + at_backup.min(1),
        "{listed:?}"
    );
    // The API enrolment came back: edge-02 connects, with its labels.
    let cfg = agent::write_config(
        restored.pki.path(),
        "edge-02",
        &edge2_dir,
        restored.hub,
        &[&restored.server_pin],
        "",
    );
    let edge2_agent = TestAgent::start(cfg);
    let http_addr = restored.http;
    eventually(
        "edge-02 connects to the restored node",
        PATIENCE,
        || async move {
            let r = http::get(http_addr, "/api/v1/agents/edge-02", Some(VIEWER_TOKEN)).await;
            r.status == 200 && r.json()["connected"] == true
        },
    )
    .await;
    let view = http::get(http_addr, "/api/v1/agents/edge-02", Some(VIEWER_TOKEN)).await;
    assert_eq!(
        view.json()["authoritative_labels"],
        json!({"tier": "gold"}),
        "{}",
        view.body
    );
    edge2_agent.stop().await;
    backend.terminate().await;
    let verify = run(&["audit", "verify"], &fresh_config, &[]);
    let (stdout, stderr) = text(&verify);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "after running on restored files: {stdout}{stderr}"
    );
}
