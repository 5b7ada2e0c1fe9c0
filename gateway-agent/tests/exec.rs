//! The [`Executor`] with real child processes: literal arguments, timeouts and cancels that
//! leave no process behind, limits, and at-most-once across restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use agentmesh_protocol::{CommandFrame, CommandStatus, ResultFrame};
use gateway_agent::commands::Commands;
use gateway_agent::{Executor, GatewayConfig, Results, Submitted};
use serde_json::{json, Value};

const VERBS: &str = r#"
[[verbs]]
name = "echo"
program = "/bin/echo"
args = ["{message}"]
params.message = { type = "string", required = true }

[[verbs]]
name = "sleep"
program = "/bin/sleep"
args = ["{secs}"]
timeout_secs = 30
params.secs = { type = "string", pattern = "[0-9]+(\\.[0-9]+)?", required = true }

[[verbs]]
name = "group"
description = "a shell with a background child and a foreground child, all in one group"
program = "/bin/sh"
args = ["-c", "sleep \"$0\" & sleep \"$0\"; wait", "{secs}"]
timeout_secs = 30
params.secs = { type = "string", pattern = "[0-9]+(\\.[0-9]+)?", required = true }

[[verbs]]
name = "mkunique"
program = "/usr/bin/mktemp"
args = ["-d", "-p", "{parent}"]
params.parent = { type = "string", required = true }

[[verbs]]
name = "spew"
program = "/usr/bin/seq"
args = ["1", "100000"]
max_output_bytes = 1024

[[verbs]]
name = "env"
program = "/usr/bin/env"

[[verbs]]
name = "pwd"
program = "/bin/pwd"
working_dir = "/"

[[verbs]]
name = "fail"
program = "/bin/false"

[[verbs]]
name = "suicide"
program = "/bin/sh"
args = ["-c", "kill -9 $$"]

[[verbs]]
name = "missing"
program = "/nonexistent/agentmesh-program"

[[verbs]]
name = "ghost_user"
program = "/bin/echo"
run_as = "agentmesh-no-such-user"

[[verbs]]
name = "as_nobody"
program = "/usr/bin/id"
args = ["-u"]
run_as = "nobody"

[[verbs]]
name = "optional"
program = "/bin/echo"
args = ["[", "{word}", "--n={n}", "]"]
params.word = { type = "string" }
params.n = { type = "integer", min = 1, max = 9 }
"#;

fn config(state: &Path, limits: &str) -> GatewayConfig {
    let text = format!(
        r#"
[agent]
id = "edge-01"
state_dir = "{state}"

[outbound]
backend_url = "wss://hub.test:8081/ws/agent"
ca = "tls/ca.pem"
cert = "tls/cert.pem"
key = "tls/key.pem"
server_pins = ["sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="]

{limits}
{VERBS}
"#,
        state = state.display()
    );
    GatewayConfig::from_str_with_env(&text, &state.join("gateway.toml"), Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn open(state: &Path) -> (Executor, Results) {
    Executor::open(&config(state, "")).unwrap()
}

fn command(id: &str, verb: &str, args: Value) -> CommandFrame {
    CommandFrame {
        command_id: id.to_owned(),
        verb: verb.to_owned(),
        args: args.as_object().cloned().unwrap_or_default(),
        timeout_ms: None,
        requested_by: "test".to_owned(),
        issued_at: "2026-11-25T08:00:00Z".to_owned(),
    }
}

/// Waits for `id`'s result on the channel.
async fn result_of(results: &mut Results, id: &str) -> ResultFrame {
    let wait = async {
        loop {
            let r = results.recv().await.expect("results channel closed").frame;
            if r.command_id == id {
                return r;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no result for {id}"))
}

async fn run(exec: &Executor, results: &mut Results, cmd: CommandFrame) -> ResultFrame {
    let id = cmd.command_id.clone();
    match exec.submit(cmd).await {
        Submitted::Started => result_of(results, &id).await,
        Submitted::Reply(r) => r.frame,
        Submitted::AlreadyRunning => panic!("{id} is already running"),
    }
}

fn error_code(r: &ResultFrame) -> &str {
    r.error.as_ref().map_or("", |e| e.code.as_str())
}

/// Live processes whose argv has `arg` as a whole element (zombies have no cmdline).
fn processes_with_arg(arg: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| c.split(|b| *b == 0).any(|part| part == arg.as_bytes()))
        .count()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn arguments_arrive_literally_without_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = open(dir.path());
    let hostile = "a;b $(id) `x` && rm -rf / | cat\nnext 'q' \"d\" *";
    let r = run(
        &exec,
        &mut results,
        command("c-echo", "echo", json!({"message": hostile})),
    )
    .await;
    assert_eq!(r.status, CommandStatus::Ok, "{r:?}");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.stdout, format!("{hostile}\n"));
    assert!(r.started_at.is_some() && r.duration_ms.is_some());
    // Optional params: a whole-element placeholder is dropped, an embedded one is empty.
    let r = run(&exec, &mut results, command("c-opt", "optional", json!({}))).await;
    assert_eq!(r.stdout, "[ --n= ]\n");
    let r = run(
        &exec,
        &mut results,
        command("c-opt2", "optional", json!({"word": "a b", "n": 3})),
    )
    .await;
    assert_eq!(r.stdout, "[ a b --n=3 ]\n");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = open(dir.path());
    let secs = "30.0271"; // unique, to find it in /proc
    let mut cmd = command("c-timeout", "group", json!({"secs": secs}));
    cmd.timeout_ms = Some(1000);
    let r = run(&exec, &mut results, cmd).await;
    assert_eq!(r.status, CommandStatus::Timeout, "{r:?}");
    assert_eq!(error_code(&r), "timeout");
    // Not a wall-clock bound (the box may be slow): the group was killed rather than left to
    // finish, so the command ended before its 30 s sleep could have.
    let ran_ms = r.duration_ms.expect("duration recorded");
    assert!(ran_ms < 30_000, "ran {ran_ms} ms: the sleep was not killed");
    eventually("no process of the group left", || {
        processes_with_arg(secs) == 0
    })
    .await;
    assert_eq!(exec.running(), 0);
}

#[tokio::test]
async fn cancel_stops_a_running_command() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = open(dir.path());
    let secs = "29.0313";
    let cmd = command("c-cancel", "sleep", json!({"secs": secs}));
    assert_eq!(exec.submit(cmd).await, Submitted::Started);
    eventually("sleep running", || processes_with_arg(secs) == 1).await;
    assert!(exec.cancel("c-cancel"));
    let r = result_of(&mut results, "c-cancel").await;
    assert_eq!(r.status, CommandStatus::Cancelled, "{r:?}");
    assert_eq!(error_code(&r), "cancelled");
    eventually("sleep gone", || processes_with_arg(secs) == 0).await;
    assert!(!exec.cancel("c-cancel"), "nothing left to cancel");
}

#[tokio::test]
async fn a_repeated_command_id_executes_once() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("unique-parent");
    std::fs::create_dir(&parent).unwrap();
    let (exec, mut results) = open(&dir.path().join("state"));
    let cmd = command("c-once", "mkunique", json!({"parent": parent}));
    let first = run(&exec, &mut results, cmd.clone()).await;
    assert_eq!(first.status, CommandStatus::Ok, "{first:?}");
    for _ in 0..3 {
        match exec.submit(cmd.clone()).await {
            Submitted::Reply(again) => assert_eq!(again.frame, first),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 1);

    // A duplicate of a command still running is ignored; only one result comes.
    let cmd = command("c-running", "sleep", json!({"secs": "0.3"}));
    assert_eq!(exec.submit(cmd.clone()).await, Submitted::Started);
    assert_eq!(exec.submit(cmd).await, Submitted::AlreadyRunning);
    let r = result_of(&mut results, "c-running").await;
    assert_eq!(r.status, CommandStatus::Ok);
    assert!(results.try_recv().is_none());
}

#[tokio::test]
async fn a_restart_answers_from_the_store_and_keeps_pending_results() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("unique-parent");
    std::fs::create_dir(&parent).unwrap();
    let state = dir.path().join("state");
    let first = {
        let (exec, results) = open(&state);
        let mut commands = Commands::new(exec.clone(), results);
        let cmd = command("c-durable", "mkunique", json!({"parent": parent}));
        assert_eq!(commands.handle_command(cmd).await, None);
        let r = commands.next_result().await.frame;
        assert_eq!(r.command_id, "c-durable");
        // Finished but never written to a session: pending.
        assert_eq!(commands.pending_results(), ["c-durable"]);
        exec.shutdown(Duration::from_secs(1)).await;
        r
    };
    let (exec, results) = open(&state);
    let mut commands = Commands::new(exec.clone(), results);
    assert_eq!(commands.pending_results(), ["c-durable"]);
    let cmd = command("c-durable", "mkunique", json!({"parent": parent}));
    let again = commands.handle_command(cmd).await.map(|o| o.frame);
    assert_eq!(again, Some(first.clone()));
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 1);
    // A new session starts with the pending result; once delivered it is no longer pending.
    let backlog = commands.backlog();
    assert_eq!(backlog.ids, ["c-durable"]);
    let stored = commands.stored("c-durable").await.map(|o| o.frame);
    assert_eq!(stored, Some(first));
    commands.delivered("c-durable");
    assert!(commands.pending_results().is_empty());
    // Delivered just now, then the session died: the next session sends it again.
    commands.session_ended();
    assert_eq!(commands.backlog().ids, ["c-durable"]);
    // And a restart treats the last deliveries the same way (a clean stop writes the
    // delivery marks kept in memory).
    drop(commands);
    drop(exec);
    let (exec, results) = open(&state);
    let mut commands = Commands::new(exec, results);
    assert!(commands.pending_results().is_empty());
    assert_eq!(commands.backlog().ids, ["c-durable"]);
}

#[tokio::test]
async fn output_is_capped_and_the_rest_drained() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = open(dir.path());
    let r = run(&exec, &mut results, command("c-spew", "spew", json!({}))).await;
    // seq only exits 0 if every write succeeded: the pipe was drained past the cap.
    assert_eq!(r.status, CommandStatus::Ok, "{r:?}");
    assert_eq!(r.stdout.len(), 1024);
    assert!(r.stdout.starts_with("1\n2\n3\n"));
    assert!(r.truncated);
}

#[tokio::test]
async fn the_environment_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = open(dir.path());
    let r = run(&exec, &mut results, command("c-env", "env", json!({}))).await;
    assert_eq!(r.stdout, "PATH=/usr/sbin:/usr/bin:/sbin:/bin\n");
    let r = run(&exec, &mut results, command("c-pwd", "pwd", json!({}))).await;
    assert_eq!(r.stdout, "/\n");
}

#[tokio::test]
async fn failures_carry_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = open(dir.path());
    let r = run(&exec, &mut results, command("c-fail", "fail", json!({}))).await;
    assert_eq!((r.status, r.exit_code), (CommandStatus::Failed, Some(1)));
    assert_eq!(error_code(&r), "nonzero_exit");
    let r = run(&exec, &mut results, command("c-kill", "suicide", json!({}))).await;
    assert_eq!((r.status, r.exit_code), (CommandStatus::Failed, None));
    assert_eq!(error_code(&r), "signal");
    let r = run(
        &exec,
        &mut results,
        command("c-missing", "missing", json!({})),
    )
    .await;
    assert_eq!((r.status, r.exit_code), (CommandStatus::Failed, None));
    assert_eq!(error_code(&r), "spawn_failed");
    let r = run(
        &exec,
        &mut results,
        command("c-ghost", "ghost_user", json!({})),
    )
    .await;
    assert_eq!(r.status, CommandStatus::Failed);
    assert_eq!(error_code(&r), "run_as_failed");
    let r = run(
        &exec,
        &mut results,
        command("c-nobody", "as_nobody", json!({})),
    )
    .await;
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(r.stdout, format!("{}\n", nobody.uid), "{r:?}");
    } else {
        assert_eq!(error_code(&r), "run_as_failed", "{r:?}");
    }
}

#[tokio::test]
async fn refusals_are_immediate_and_name_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = Executor::open(&config(
        dir.path(),
        "[limits]\nmax_concurrency = 1\ncommands_per_minute = 3",
    ))
    .unwrap();
    let reply = |s: Submitted| match s {
        Submitted::Reply(r) => r.frame,
        other => panic!("{other:?}"),
    };
    let r = reply(exec.submit(command("r-1", "reboot", json!({}))).await);
    assert_eq!(
        (r.status, error_code(&r)),
        (CommandStatus::Rejected, "unknown_verb")
    );
    let r = reply(
        exec.submit(command("r-2", "sleep", json!({"secs": "1; reboot"})))
            .await,
    );
    assert_eq!(error_code(&r), "invalid_args");
    assert!(r.error.unwrap().message.contains("secs"));
    let r = reply(
        exec.submit(command("../../etc/passwd", "ping", json!({})))
            .await,
    );
    assert_eq!(error_code(&r), "invalid_command_id");

    // One running: a second is over max_concurrency (built-ins count too).
    let long = command("r-long", "sleep", json!({"secs": "0.5"}));
    assert_eq!(exec.submit(long).await, Submitted::Started);
    let r = reply(exec.submit(command("r-ping", "ping", json!({}))).await);
    assert_eq!(error_code(&r), "rate_limited");
    assert!(r.error.unwrap().message.contains("max_concurrency"));
    result_of(&mut results, "r-long").await;
    // Refused commands did not run, so the same id may run once admitted.
    let r = run(&exec, &mut results, command("r-ping", "ping", json!({}))).await;
    assert_eq!(r.status, CommandStatus::Ok);
    let r = run(&exec, &mut results, command("r-3", "ping", json!({}))).await;
    assert_eq!(r.status, CommandStatus::Ok);
    // Three started within the minute.
    let r = reply(exec.submit(command("r-4", "ping", json!({}))).await);
    assert_eq!(error_code(&r), "rate_limited");
    assert!(r.error.unwrap().message.contains("commands_per_minute"));
}

#[tokio::test]
async fn builtins_answer_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = open(dir.path());
    let r = run(&exec, &mut results, command("b-ping", "ping", json!({}))).await;
    assert_eq!((r.status, r.exit_code), (CommandStatus::Ok, Some(0)));
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["agent_id"], "edge-01");
    assert!(
        v["version"].is_string() && v["agent_time"].is_string(),
        "{v}"
    );
    let r = run(&exec, &mut results, command("b-sys", "sysinfo", json!({}))).await;
    assert_eq!((r.status, r.exit_code), (CommandStatus::Ok, Some(0)));
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["hostname"].is_string() && v["kernel"].is_string(), "{v}");
}

#[tokio::test]
async fn shutdown_cancels_what_outlives_the_grace_and_refuses_new_work() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = open(dir.path());
    let secs = "28.0417";
    let cmd = command("s-long", "sleep", json!({"secs": secs}));
    assert_eq!(exec.submit(cmd).await, Submitted::Started);
    eventually("sleep running", || processes_with_arg(secs) == 1).await;
    exec.shutdown(Duration::from_millis(200)).await;
    assert_eq!(exec.running(), 0);
    let r = result_of(&mut results, "s-long").await;
    assert_eq!(r.status, CommandStatus::Cancelled);
    assert_eq!(error_code(&r), "agent_shutdown");
    assert_eq!(processes_with_arg(secs), 0);
    match exec.submit(command("s-new", "ping", json!({}))).await {
        Submitted::Reply(r) => assert_eq!(error_code(&r.frame), "shutting_down"),
        other => panic!("{other:?}"),
    }
    // The stored result is still there for a repeated id.
    match exec
        .submit(command("s-long", "sleep", json!({"secs": secs})))
        .await
    {
        Submitted::Reply(again) => assert_eq!(again.frame, r),
        other => panic!("{other:?}"),
    }
}
