//! `meshctl history`, `meshctl show ID`, `meshctl cancel ID`.

use http::Method;
use serde_json::Value;

use super::{query, Ctx};
use crate::client::enc;
use crate::output::{cell, clean, table};
use crate::{Error, ExitCode};

/// `GET /api/v1/commands?agent=&status=&limit=`.
pub async fn history(
    ctx: &Ctx,
    agent: Option<String>,
    status: Option<String>,
    limit: usize,
) -> Result<u8, Error> {
    let q = query(&[
        ("agent", agent),
        ("status", status),
        ("limit", Some(limit.to_string())),
    ]);
    let value = ctx.client.get(&format!("/api/v1/commands{q}")).await?;
    ctx.out.show(&value, |v| {
        let rows: Vec<Vec<String>> = v["commands"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                vec![
                    cell(&c["command_id"]),
                    cell(&c["agent_id"]),
                    cell(&c["verb"]),
                    cell(&c["status"]),
                    cell(&c["exit_code"]),
                    cell(&c["requested_by"]),
                    cell(&c["created_at"]),
                    cell(&c["duration_ms"]),
                    cell(&c["job_id"]),
                ]
            })
            .collect();
        table(
            &[
                "command", "agent", "verb", "status", "exit", "by", "created", "ms", "job",
            ],
            &rows,
        )
    })?;
    Ok(ExitCode::OK)
}

/// `GET /api/v1/commands/{id}?include=output`: a command with its output, or a job.
pub async fn show(ctx: &Ctx, id: &str) -> Result<u8, Error> {
    let value = ctx
        .client
        .get(&format!("/api/v1/commands/{}?include=output", enc(id)))
        .await?;
    ctx.out.show(&value, |v| {
        if v.get("job_id").is_some() && v.get("results").is_some() {
            let mut text = String::new();
            for k in ["job_id", "verb", "requested_by", "created_at"] {
                text.push_str(&format!("{:<14} {}\n", format!("{k}:"), cell(&v[k])));
            }
            text.push('\n');
            text.push_str(&super::fanout::summary_table(v));
            text
        } else {
            record_detail(v)
        }
    })?;
    Ok(ExitCode::OK)
}

fn record_detail(v: &Value) -> String {
    let mut text = String::new();
    for k in [
        "command_id",
        "agent_id",
        "verb",
        "args",
        "status",
        "exit_code",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "timeout_ms",
        "job_id",
    ] {
        text.push_str(&format!("{:<14} {}\n", format!("{k}:"), cell(&v[k])));
    }
    if !v["error"].is_null() {
        text.push_str(&format!(
            "{:<14} {}: {}\n",
            "error:",
            cell(&v["error"]["code"]),
            cell(&v["error"]["message"])
        ));
    }
    for stream in ["stdout", "stderr"] {
        if let Some(s) = v[stream].as_str().filter(|s| !s.is_empty()) {
            text.push_str(&format!("--- {stream}\n"));
            // Line breaks kept, other control characters shown as text.
            for line in s.lines() {
                text.push_str(&clean(line));
                text.push('\n');
            }
        }
    }
    text
}

/// `DELETE /api/v1/commands/{id}`.
pub async fn cancel(ctx: &Ctx, id: &str) -> Result<u8, Error> {
    let value = ctx
        .client
        .json(
            Method::DELETE,
            &format!("/api/v1/commands/{}", enc(id)),
            None,
        )
        .await?;
    ctx.out.show(&value, record_detail)?;
    Ok(ExitCode::OK)
}
