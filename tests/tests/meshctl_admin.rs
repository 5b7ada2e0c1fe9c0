//! `meshctl` end to end, the rest of it: the profile file (and its permission check), join
//! tokens, revocation, cancel, the audit log (also `--follow`) and shell completions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use agentmesh_e2e::backend::{ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::meshctl::{home, meshctl, meshctl_fleet};
use agentmesh_e2e::{fleet, PATIENCE};
use tokio::io::AsyncBufReadExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_file_is_used_and_refused_when_others_can_read_it() {
    let fleet = meshctl_fleet(&[("web-1", "web")]).await;
    let home = home(&fleet);
    let xdg = home.join("xdg");
    std::fs::create_dir_all(xdg.join("agentmesh")).unwrap();
    let file = xdg.join("agentmesh/meshctl.toml");
    std::fs::write(
        &file,
        format!(
            "[default]\nurl = \"http://{addr}\"\ntoken = \"{VIEWER_TOKEN}\"\n\n[ops]\nurl = \"http://{addr}\"\ntoken = \"{ADMIN_TOKEN}\"\n",
            addr = fleet.hub.http
        ),
    )
    .unwrap();
    let env = [("XDG_CONFIG_HOME", xdg.to_str().unwrap())];

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = meshctl(None, None, &home, &env, &["agents"]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("too open") && run.stderr.contains("chmod 600"),
        "{run:?}"
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = meshctl(None, None, &home, &env, &["agents"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["count"], 1);
    // The viewer of [default] may not issue join tokens; the admin of [ops] may.
    let run = meshctl(None, None, &home, &env, &["enroll-token", "new-1"]).await;
    assert_eq!(run.code, Some(4), "{run:?}");
    let run = meshctl(
        None,
        None,
        &home,
        &env,
        &["--profile", "ops", "enroll-token", "new-1", "--ttl", "600"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    assert!(v["token"].as_str().unwrap().starts_with("amj_"), "{v}");
    assert_eq!(v["agent_id"], "new-1");
    // A flag wins over the file.
    let run = meshctl(None, Some("amt_wrong"), &home, &env, &["agents"]).await;
    assert_eq!(run.code, Some(4), "{run:?}");
    let run = meshctl(None, None, &home, &env, &["--profile", "nope", "agents"]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("no profile [nope]"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_revoke_and_the_audit_log() {
    let fleet = meshctl_fleet(&[("web-1", "web"), ("web-2", "web")]).await;
    let url = format!("http://{}", fleet.hub.http);
    let home = home(&fleet);

    let run = meshctl(
        Some(&url),
        Some(OPERATOR_TOKEN),
        &home,
        &[],
        &["run", "web-1", "sleep", "secs=30", "--async", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let id = run.json()["command_id"].as_str().unwrap().to_owned();
    let run = meshctl(
        Some(&url),
        Some(OPERATOR_TOKEN),
        &home,
        &[],
        &["cancel", &id, "-o", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let done = fleet::wait_final(&fleet.hub, &id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let run = meshctl(
        Some(&url),
        Some(VIEWER_TOKEN),
        &home,
        &[],
        &["show", &id, "-o", "table"],
    )
    .await;
    assert!(run.stdout.contains("cancelled"), "{run:?}");

    // Only an admin revokes.
    let run = meshctl(
        Some(&url),
        Some(OPERATOR_TOKEN),
        &home,
        &[],
        &["revoke", "web-2"],
    )
    .await;
    assert_eq!(run.code, Some(4), "{run:?}");
    let run = meshctl(
        Some(&url),
        Some(ADMIN_TOKEN),
        &home,
        &[],
        &["revoke", "web-2", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["agent_id"], "web-2");
    let run = meshctl(
        Some(&url),
        Some(VIEWER_TOKEN),
        &home,
        &[],
        &["agents", "-o", "table"],
    )
    .await;
    let row = run.stdout.lines().find(|l| l.starts_with("web-2")).unwrap();
    assert!(row.contains("revoked"), "{row}");

    let run = meshctl(
        Some(&url),
        Some(ADMIN_TOKEN),
        &home,
        &[],
        &["audit", "--kind", "command_cancelled", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let records = run.json()["records"].as_array().unwrap().clone();
    assert!(
        records.iter().any(|r| r["command_id"] == id.as_str()),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_follow_prints_records_as_they_are_written() {
    let fleet = meshctl_fleet(&[("web-1", "web")]).await;
    let url = format!("http://{}", fleet.hub.http);
    let home = home(&fleet);
    let mut child = tokio::process::Command::new(agentmesh_e2e::process::meshctl_binary())
        .args([
            "audit",
            "--follow",
            "--kind",
            "join_token_created",
            "-o",
            "json",
        ])
        .env("AGENTMESH_URL", &url)
        .env("AGENTMESH_TOKEN", ADMIN_TOKEN)
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Written after the follower started: it must show up on its own.
    for id in ["late-1", "late-2"] {
        let run = meshctl(
            Some(&url),
            Some(ADMIN_TOKEN),
            &home,
            &[],
            &["enroll-token", id],
        )
        .await;
        assert_eq!(run.code, Some(0), "{run:?}");
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("audit --follow printed nothing new")
            .unwrap()
            .expect("audit --follow ended");
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["kind"], "join_token_created", "{record}");
        seen.push(record["agent_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(seen, ["late-1", "late-2"]);
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_need_no_backend() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let run = meshctl(None, None, dir.path(), &[], &["completions", shell]).await;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(
            run.stdout.contains("fanout") && run.stdout.contains("enroll-token"),
            "{shell}"
        );
    }
}
