//! Issue 7, "Audit tail is anchored": a cleanly stopped backend's log verifies against the
//! signed checkpoint in its store; cutting records off the end makes
//! `backend-agent audit verify --config` fail and name the checkpoint, while
//! `audit verify FILE...` cannot tell and says the tail is unanchored; a restart on the cut log
//! records `audit_tail_missing` and keeps running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "audit_proc/mod.rs"]
mod audit_proc;

use agentmesh_e2e::{eventually, init_logging, PATIENCE};
use audit_proc::{log_files, text, verify_files, Setup};

#[tokio::test]
async fn cutting_the_tail_of_a_cleanly_stopped_log_fails_anchored_verify_naming_the_checkpoint() {
    init_logging();
    let setup = Setup::new(|t| t).await;
    let backend = setup.start_backend().await;
    let agent = setup.connect_agent().await;
    for _ in 0..3 {
        let r = setup.command().await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    agent.stop().await;
    backend.terminate().await;

    let out = setup.verify_config();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("tail anchored"), "{stdout}");

    // Cut the last records off the end: still a valid chain, but short of the checkpoint.
    let log = setup.default_audit_log();
    let content = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = content.lines().collect();
    let last_seq = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    let final_seq = last_seq(lines[lines.len() - 1]);
    let kept = &lines[..lines.len() - 3];
    std::fs::write(&log, kept.join("\n") + "\n").unwrap();

    let out = setup.verify_config();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("checkpoint seq {final_seq} ")),
        "names the checkpoint (the last record before shutdown): {stderr}"
    );
    assert!(stderr.contains("cut off the end"), "{stderr}");

    // Without the anchor the cut is invisible, and the tool says so.
    let out = verify_files(&log_files(&log));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("tail unanchored"), "{stdout}");

    // A restart on the cut log continues the chain, but says loudly that records are missing,
    // and the anchored verify keeps failing on that record.
    let backend = setup.start_backend().await;
    backend.terminate().await;
    let content = std::fs::read_to_string(&log).unwrap();
    let missing = content
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "audit_tail_missing")
        .expect("the restart records the missing tail");
    assert_eq!(missing["details"]["checkpoint_seq"], final_seq, "{missing}");
    let out = setup.verify_config();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("found records missing"), "{stderr}");
}

fn last_seq_of(path: &std::path::Path) -> u64 {
    let content = std::fs::read_to_string(path).unwrap();
    let last = content.lines().last().unwrap();
    serde_json::from_str::<serde_json::Value>(last).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// The seq of the checkpoint `audit verify --config` reports, if it passes.
fn anchored_seq(setup: &Setup) -> Option<u64> {
    let out = setup.verify_config();
    let (stdout, _) = text(&out);
    let rest = stdout.split("reaches checkpoint seq ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

#[tokio::test]
async fn checkpoints_follow_the_running_log_so_a_crashed_backend_is_anchored_too() {
    init_logging();
    let setup = Setup::new(|t| t).await;
    let backend = setup.start_backend().await;
    let agent = setup.connect_agent().await;
    for _ in 0..3 {
        let r = setup.command().await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let log = setup.default_audit_log();
    let target = last_seq_of(&log);
    // The periodic checkpoint (not the shutdown one) catches up with the records written.
    eventually("a checkpoint covers the commands", PATIENCE, || async {
        anchored_seq(&setup).is_some_and(|seq| seq >= target)
    })
    .await;
    backend.kill_9();
    agent.stop().await;
    let anchored = anchored_seq(&setup).expect("the log of a killed backend verifies");
    assert!(anchored >= target);

    let content = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = content
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
                < anchored
        })
        .collect();
    std::fs::write(&log, kept.join("\n") + "\n").unwrap();
    let out = setup.verify_config();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("checkpoint seq {anchored} ")),
        "{stderr}"
    );
}
