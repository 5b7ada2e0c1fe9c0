//! Option injection: the agent itself refuses a string value starting with `-` unless the
//! parameter sets `allow_leading_dash` (a backend that skipped validation does not get it run),
//! and `check-config` warns about string parameters without a pattern.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use agentmesh_protocol::{CommandFrame, CommandStatus, ResultFrame};
use gateway_agent::{config_warnings, Executor, GatewayConfig, Results, Submitted};
use serde_json::{json, Value};

const VERBS: &str = r#"
[[verbs]]
name = "echo"
program = "/bin/echo"
args = ["{message}"]
params.message = { type = "string", required = true }

[[verbs]]
name = "echo_opts"
program = "/bin/echo"
args = ["--", "{flags}"]
params.flags = { type = "string", pattern = "-[a-z]+", allow_leading_dash = true, required = true }

[[verbs]]
name = "quota"
program = "/bin/echo"
args = ["--quota={mb}"]
params.mb = { type = "integer", min = 1, max = 10 }
"#;

fn config(state: &Path) -> GatewayConfig {
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
{VERBS}
"#,
        state = state.display()
    );
    GatewayConfig::from_str_with_env(&text, &state.join("gateway.toml"), Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
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

async fn run(exec: &Executor, results: &mut Results, cmd: CommandFrame) -> ResultFrame {
    let id = cmd.command_id.clone();
    match exec.submit(cmd).await {
        Submitted::Reply(r) => r.frame,
        Submitted::AlreadyRunning => panic!("{id} is already running"),
        Submitted::Started => {
            let wait = async {
                loop {
                    let r = results.recv().await.expect("results channel closed").frame;
                    if r.command_id == id {
                        return r;
                    }
                }
            };
            // A generous bound so a broken executor fails the test instead of hanging it.
            tokio::time::timeout(Duration::from_secs(60), wait)
                .await
                .unwrap_or_else(|_| panic!("no result for {id}"))
        }
    }
}

#[tokio::test]
async fn the_agent_rejects_a_leading_dash_the_backend_let_through() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = Executor::open(&config(dir.path())).unwrap();
    for (i, value) in ["-rf", "--output=/etc/cron.d/x", "-"]
        .into_iter()
        .enumerate()
    {
        let r = run(
            &exec,
            &mut results,
            command(&format!("c-{i}"), "echo", json!({"message": value})),
        )
        .await;
        assert_eq!(r.status, CommandStatus::Rejected, "{value}: {r:?}");
        let error = r.error.unwrap();
        assert_eq!(error.code, "invalid_args");
        assert!(error.message.contains("allow_leading_dash"), "{error:?}");
        assert!(r.exit_code.is_none() && r.started_at.is_none(), "never ran");
    }
    // A dash elsewhere in the value is fine.
    let r = run(
        &exec,
        &mut results,
        command("c-mid", "echo", json!({"message": "a-rf"})),
    )
    .await;
    assert_eq!(r.status, CommandStatus::Ok, "{r:?}");
    assert_eq!(r.stdout, "a-rf\n");
}

#[tokio::test]
async fn allow_leading_dash_lets_the_value_through() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, mut results) = Executor::open(&config(dir.path())).unwrap();
    let r = run(
        &exec,
        &mut results,
        command("c-ok", "echo_opts", json!({"flags": "-rf"})),
    )
    .await;
    assert_eq!(r.status, CommandStatus::Ok, "{r:?}");
    assert_eq!(r.stdout, "-- -rf\n");
    // Its pattern still applies.
    let r = run(
        &exec,
        &mut results,
        command("c-bad", "echo_opts", json!({"flags": "--output=/x"})),
    )
    .await;
    assert_eq!(r.status, CommandStatus::Rejected, "{r:?}");
}

#[test]
fn check_config_warns_about_string_params_without_a_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let warnings = config_warnings(&config(dir.path()));
    let all = warnings.join("\n");
    assert_eq!(warnings.len(), 2, "{all}");
    assert!(
        all.contains("verbs[0].params.message") && all.contains("without a pattern"),
        "{all}"
    );
    assert!(
        all.contains("verbs[1].params.flags") && all.contains("allow_leading_dash"),
        "{all}"
    );
    // Integer params are bounded by min/max; no warning for them.
    assert!(!all.contains("params.mb"), "{all}");
}

#[test]
fn the_check_config_command_prints_the_warnings() {
    let dir = tempfile::tempdir().unwrap();
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
{VERBS}
"#,
        state = dir.path().display()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-agent"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: ") && stderr.contains("without a pattern"),
        "{stderr}"
    );
    // The TLS files are missing, so the check itself fails; warnings alone would not.
    assert_eq!(out.status.code(), Some(64), "{stderr}");
}
