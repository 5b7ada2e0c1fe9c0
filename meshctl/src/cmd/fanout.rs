//! `meshctl fanout`: submits a job, shows live progress on stderr (a terminal only) fed by the
//! event stream (`GET /api/v1/events`, `job_progress`), then a per-agent summary. A backend
//! without the event stream (404), a stream that breaks, goes quiet or says `reset` is
//! followed by polling `GET /api/v1/commands/{job_id}` every [`POLL_EVERY`] instead.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use agentmesh_protocol::VerbSpec;
use http::Method;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Bytes};
use serde_json::{json, Map, Value};

use super::Ctx;
use crate::cli::{key_value, FanoutArgs, When};
use crate::client::enc;
use crate::output::{cell, progress, table};
use crate::sse::Parser;
use crate::{Error, ExitCode};

/// Interval of the polling fallback.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// The stream sends a keep-alive every 15 s; silence for this long means it is dead.
const STREAM_IDLE: Duration = Duration::from_secs(45);

/// Runs the fan-out; exit 0 only when every target succeeded.
pub async fn fanout(ctx: &Ctx, a: FanoutArgs) -> Result<u8, Error> {
    let mut selector = Map::new();
    let mut labels = Map::new();
    for l in &a.labels {
        let (k, v) = key_value("--label", l)?;
        labels.insert(k, Value::String(v));
    }
    if !labels.is_empty() {
        selector.insert("labels".into(), Value::Object(labels));
    }
    if !a.ids.is_empty() {
        selector.insert("ids".into(), json!(a.ids));
    }
    let args = schema_args(ctx, &a).await?;
    let mut body = json!({"selector": selector, "verb": a.verb, "args": args});
    if let Some(n) = a.max_concurrency {
        body["max_concurrency"] = json!(n);
    }
    if let Some(n) = a.max_errors {
        body["max_errors"] = json!(n);
    }
    if let Some(s) = a.timeout {
        body["timeout_ms"] = json!(s.saturating_mul(1000));
    }
    let answer = ctx
        .client
        .json(Method::POST, "/api/v1/commands", Some(&body))
        .await?;
    let job_id = answer["job_id"]
        .as_str()
        .ok_or_else(|| Error::BadAnswer("fan-out answer without job_id".into()))?
        .to_owned();
    let draw = match a.progress {
        When::Auto => std::io::stderr().is_terminal(),
        When::Always => true,
        When::Never => false,
    };
    let mut bar = Progress::new(draw, &job_id);
    follow(ctx, &job_id, &mut bar).await?;
    bar.finish();
    let job = ctx
        .client
        .get(&format!("/api/v1/commands/{}", enc(&job_id)))
        .await?;
    ctx.out.show(&job, summary_table)?;
    let s = &job["summary"];
    Ok(
        if s["targets"].as_u64().is_some() && s["ok"] == s["targets"] {
            ExitCode::OK
        } else {
            ExitCode::FAILED
        },
    )
}

/// Types the arguments by the verb's schema as the targets advertise it, and checks them
/// against every target's schema, so a value one target would refuse is refused here. No
/// target visible (or none advertising the verb): strings, and the backend judges.
async fn schema_args(ctx: &Ctx, a: &FanoutArgs) -> Result<Map<String, Value>, Error> {
    let mut query = Vec::new();
    for l in &a.labels {
        query.push(format!("label={}", enc(l)));
    }
    let path = format!("/api/v1/agents?{}", query.join("&"));
    let listing = ctx.client.get(path.trim_end_matches('?')).await?;
    let mut specs: Vec<(String, VerbSpec)> = Vec::new();
    for agent in listing["agents"].as_array().into_iter().flatten() {
        let id = agent["id"].as_str().unwrap_or_default();
        if !a.ids.is_empty() && !a.ids.iter().any(|i| i == id) {
            continue;
        }
        let verbs: Vec<VerbSpec> =
            serde_json::from_value(agent["verbs"].clone()).unwrap_or_default();
        if let Some(v) = verbs.into_iter().find(|v| v.name == a.verb) {
            specs.push((id.to_owned(), v));
        }
    }
    let Some((_, first)) = specs.first() else {
        return crate::args::untyped(&a.params);
    };
    let args = crate::args::typed(first, &a.params)?;
    for (id, spec) in &specs[1..] {
        spec.validate_args(&args)
            .map_err(|e| Error::usage(format!("agent {id}: verb {}: {e}", a.verb)))?;
    }
    Ok(args)
}

/// Follows the job until no target is pending: the event stream if the backend has it,
/// polling otherwise.
async fn follow(ctx: &Ctx, job_id: &str, bar: &mut Progress) -> Result<(), Error> {
    let job_path = format!("/api/v1/commands/{}", enc(job_id));
    if let Ok(stream) = ctx.client.stream("/api/v1/events?types=job").await {
        if stream.status.is_success() {
            bar.source = "live";
            // What happened before we subscribed is read once; the stream has the rest.
            let job = ctx.client.get(&job_path).await?;
            bar.update(&job["summary"]);
            if finished(&job["summary"]) {
                return Ok(());
            }
            if let Ok(true) = follow_stream(stream.body, job_id, bar).await {
                return Ok(());
            }
        }
    }
    bar.source = "polling";
    loop {
        let job = ctx.client.get(&job_path).await?;
        bar.update(&job["summary"]);
        if finished(&job["summary"]) {
            return Ok(());
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Reads `job_progress` events for `job_id` until one says `finished`: `Ok(true)`. The
/// stream ending, going quiet, breaking or saying `reset`: `Ok(false)` (the caller polls).
pub async fn follow_stream<B>(mut body: B, job_id: &str, bar: &mut Progress) -> Result<bool, Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut parser = Parser::new();
    loop {
        let frame = match tokio::time::timeout(STREAM_IDLE, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) | Ok(Some(Err(_))) | Err(_) => return Ok(false),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let Ok(events) = parser.push(&data) else {
            return Ok(false);
        };
        for event in events {
            match event.event.as_str() {
                "reset" => return Ok(false),
                "job_progress" => {
                    let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                        continue;
                    };
                    if v["job_id"].as_str() != Some(job_id) {
                        continue;
                    }
                    bar.update(&v["summary"]);
                    if v["finished"].as_bool() == Some(true) || finished(&v["summary"]) {
                        return Ok(true);
                    }
                }
                _ => {}
            }
        }
    }
}

fn finished(summary: &Value) -> bool {
    summary["pending"].as_u64() == Some(0) && summary["targets"].as_u64().is_some()
}

/// The live progress line on stderr (only when it is a terminal).
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    job_id: String,
    started: Instant,
    drawn: bool,
    /// What feeds it: "live" (the event stream) or "polling".
    pub source: &'static str,
    /// The last summary seen.
    pub last: Value,
}

impl Progress {
    /// A progress line for `job_id`, drawn only when `tty`.
    pub fn new(tty: bool, job_id: &str) -> Self {
        Progress {
            tty,
            job_id: job_id.to_owned(),
            started: Instant::now(),
            drawn: false,
            source: "polling",
            last: Value::Null,
        }
    }

    /// Shows a `{targets, ok, failed, pending, skipped}` summary.
    pub fn update(&mut self, s: &Value) {
        self.last = s.clone();
        if !self.tty {
            return;
        }
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        let done = n("ok") + n("failed") + n("skipped");
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        progress(&format!(
            "job {}: {done}/{} done, {} failed, {} pending, {:.1}/s [{}]",
            self.job_id,
            n("targets"),
            n("failed") + n("skipped"),
            n("pending"),
            done as f64 / secs,
            self.source
        ));
        self.drawn = true;
    }

    /// Ends the line.
    pub fn finish(&mut self) {
        if self.drawn && std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
}

/// The per-agent summary of a job.
pub fn summary_table(job: &Value) -> String {
    let rows: Vec<Vec<String>> = job["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let error = match &r["error"] {
                Value::Null => "-".to_owned(),
                e => format!("{}: {}", cell(&e["code"]), cell(&e["message"])),
            };
            vec![
                cell(&r["agent_id"]),
                cell(&r["status"]),
                cell(&r["exit_code"]),
                cell(&r["duration_ms"]),
                error,
            ]
        })
        .collect();
    let s = &job["summary"];
    format!(
        "{}\n{} targets: {} ok, {} failed, {} skipped, {} pending\n",
        table(&["agent", "status", "exit", "ms", "error"], &rows).trim_end(),
        cell(&s["targets"]),
        cell(&s["ok"]),
        cell(&s["failed"]),
        cell(&s["skipped"]),
        cell(&s["pending"]),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn the_stream_is_followed_to_our_job_finishing() {
        let canned = "id: 1\nevent: job_progress\ndata: {\"job_id\":\"other\",\"finished\":true,\"summary\":{}}\n\n\
: keep-alive\n\n\
id: 2\nevent: command_status\ndata: {\"command_id\":\"c\",\"status\":\"ok\"}\n\n\
id: 3\nevent: job_progress\ndata: {\"job_id\":\"j1\",\"finished\":false,\"summary\":{\"targets\":2,\"ok\":1,\"failed\":0,\"pending\":1,\"skipped\":0}}\n\n\
id: 4\nevent: job_progress\ndata: {\"job_id\":\"j1\",\"finished\":true,\"summary\":{\"targets\":2,\"ok\":1,\"failed\":1,\"pending\":0,\"skipped\":0}}\n\n";
        let mut bar = Progress::new(false, "j1");
        let done = follow_stream(Full::new(Bytes::from(canned)), "j1", &mut bar)
            .await
            .unwrap();
        assert!(done);
        assert_eq!(bar.last["failed"], 1);
    }

    #[tokio::test]
    async fn a_stream_that_ends_or_resets_hands_over_to_polling() {
        let mut bar = Progress::new(false, "j1");
        let ended = "id: 3\nevent: job_progress\ndata: {\"job_id\":\"j1\",\"finished\":false,\"summary\":{\"targets\":2,\"pending\":2}}\n\n";
        assert!(
            !follow_stream(Full::new(Bytes::from(ended)), "j1", &mut bar)
                .await
                .unwrap()
        );
        let reset = "event: reset\ndata: {\"reason\":\"lagged\"}\n\n";
        assert!(
            !follow_stream(Full::new(Bytes::from(reset)), "j1", &mut bar)
                .await
                .unwrap()
        );
    }

    #[test]
    fn summary_table_lists_every_target() {
        let job = json!({"summary": {"targets": 2, "ok": 1, "failed": 1, "skipped": 0, "pending": 0},
            "results": [{"agent_id": "a", "status": "ok", "exit_code": 0, "duration_ms": 5, "error": null},
                        {"agent_id": "b", "status": "failed", "exit_code": 1, "duration_ms": 7,
                         "error": {"code": "exit", "message": "exit 1"}}]});
        let t = summary_table(&job);
        assert!(t.contains("b      failed  1"), "{t}");
        assert!(
            t.ends_with("2 targets: 1 ok, 1 failed, 0 skipped, 0 pending\n"),
            "{t}"
        );
    }
}
