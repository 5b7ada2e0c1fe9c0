//! `meshctl run ID VERB k=v...`: like `ssh host cmd`, the command's stdout and stderr go to
//! ours and its exit code becomes ours.

use std::io::Write as _;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use super::Ctx;
use crate::client::enc;
use crate::{Error, ExitCode};

/// What the backend adds to a command's timeout before a `wait` gives up (its `WAIT_GRACE`),
/// plus slack for the network.
const WAIT_SLACK: Duration = Duration::from_secs(15);

/// Runs one verb; see the module docs.
pub async fn run(
    ctx: &Ctx,
    id: &str,
    verb: &str,
    params: &[String],
    timeout_secs: Option<u64>,
    no_wait: bool,
) -> Result<u8, Error> {
    let spec = super::agents::verb_spec(ctx, id, verb).await?;
    let args = crate::args::typed(&spec, params)?;
    let mut body = json!({"verb": verb, "args": args, "wait": !no_wait});
    let timeout_ms = match timeout_secs {
        Some(0) => return Err(Error::usage("--timeout must be at least 1 second")),
        Some(s) => {
            let ms = s.saturating_mul(1000);
            body["timeout_ms"] = json!(ms);
            ms
        }
        None => spec.timeout_ms.max(1000),
    };
    let limit = Duration::from_millis(timeout_ms) + WAIT_SLACK;
    let path = format!("/api/v1/agents/{}/commands", enc(id));
    let record = ctx
        .client
        .json_within(Method::POST, &path, Some(&body), limit)
        .await?;
    if no_wait {
        ctx.out.show(&record, |r| {
            format!("{}\n", crate::output::cell(&r["command_id"]))
        })?;
        return Ok(ExitCode::OK);
    }
    if ctx.out.explicit {
        ctx.out.data(&record)?;
    } else {
        write_raw(&record)?;
    }
    Ok(exit_code(&record))
}

/// Copies the command's stdout and stderr to ours, byte for byte as recorded.
fn write_raw(record: &Value) -> Result<(), Error> {
    crate::output::print(record["stdout"].as_str().unwrap_or_default())?;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(record["stderr"].as_str().unwrap_or_default().as_bytes());
    if record["truncated"].as_bool() == Some(true) {
        let _ = writeln!(err, "meshctl: output was truncated by the agent");
    }
    Ok(())
}

/// Our exit code for a final command record (docs/meshctl.md): the command's own exit code
/// when it ran; 124 on timeout; 1 when it did not run (rejected, cancelled, expired).
pub fn exit_code(record: &Value) -> u8 {
    let status = record["status"].as_str().unwrap_or_default();
    let code = record["exit_code"].as_i64();
    match (status, code) {
        ("ok", Some(c)) | ("failed", Some(c)) if (0..=255).contains(&c) => c as u8,
        ("ok", _) => ExitCode::OK,
        ("timeout", _) => {
            eprintln!(
                "meshctl: command {} timed out",
                crate::output::cell(&record["command_id"])
            );
            ExitCode::TIMEOUT
        }
        _ => {
            eprintln!(
                "meshctl: command {} ended {status}: {}",
                crate::output::cell(&record["command_id"]),
                crate::output::cell(&record["error"]["message"])
            );
            ExitCode::FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_record() {
        assert_eq!(exit_code(&json!({"status": "ok", "exit_code": 0})), 0);
        assert_eq!(exit_code(&json!({"status": "failed", "exit_code": 3})), 3);
        assert_eq!(exit_code(&json!({"status": "failed", "exit_code": -9})), 1);
        assert_eq!(
            exit_code(&json!({"status": "timeout", "exit_code": null})),
            124
        );
        assert_eq!(
            exit_code(&json!({"status": "rejected", "error": {"message": "x"}})),
            1
        );
    }
}
