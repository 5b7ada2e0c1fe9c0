//! `meshctl audit [--follow]`, `meshctl enroll-token ID`, `meshctl revoke ID`.

use std::time::Duration;

use http::Method;
use serde_json::{json, Map, Value};

use super::{query, Ctx};
use crate::cli::{key_value, Format};
use crate::client::enc;
use crate::output::{cell, table};
use crate::{Error, ExitCode};

/// How often `audit --follow` asks for records after the last one seen. The event stream
/// carries agent, command and job events, not audit records, so following the audit log is
/// polling `since` (a cursor, so nothing is missed or repeated).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Filters of `meshctl audit`.
#[derive(Debug, Clone)]
pub struct AuditFilter {
    /// `since` cursor (seq) or RFC 3339 time.
    pub since: Option<String>,
    /// Agent id.
    pub agent: Option<String>,
    /// Actor.
    pub actor: Option<String>,
    /// Kind.
    pub kind: Option<String>,
    /// Page size.
    pub limit: usize,
}

fn audit_rows(records: &[Value]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|r| {
            vec![
                cell(&r["seq"]),
                cell(&r["ts"]),
                cell(&r["kind"]),
                cell(&r["actor"]),
                cell(&r["agent_id"]),
                cell(&r["command_id"]),
            ]
        })
        .collect()
}

const AUDIT_HEADERS: [&str; 6] = ["seq", "time", "kind", "actor", "agent", "command"];

/// One page of audit records, or (with `follow`) every new record until interrupted.
pub async fn audit(ctx: &Ctx, mut f: AuditFilter, follow: bool) -> Result<u8, Error> {
    let path = |f: &AuditFilter| {
        format!(
            "/api/v1/audit{}",
            query(&[
                ("since", f.since.clone()),
                ("agent", f.agent.clone()),
                ("actor", f.actor.clone()),
                ("kind", f.kind.clone()),
                ("limit", Some(f.limit.to_string())),
            ])
        )
    };
    if !follow {
        let value = ctx.client.get(&path(&f)).await?;
        ctx.out.show(&value, |v| {
            table(
                &AUDIT_HEADERS,
                &audit_rows(v["records"].as_array().map_or(&[][..], Vec::as_slice)),
            )
        })?;
        return Ok(ExitCode::OK);
    }
    let mut header = ctx.out.format == Format::Table;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let value = ctx.client.get(&path(&f)).await?;
        let records = value["records"].as_array().cloned().unwrap_or_default();
        if let Some(seq) = records.last().and_then(|r| r["seq"].as_u64()) {
            f.since = Some(seq.to_string());
        }
        print_follow(ctx, &records, &mut header)?;
        // A full page means more is waiting: ask again at once.
        if records.len() >= f.limit {
            continue;
        }
        tokio::select! {
            _ = &mut interrupted => return Ok(ExitCode::OK),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// Following prints one record per line: table rows, or JSON lines (YAML documents).
fn print_follow(ctx: &Ctx, records: &[Value], header: &mut bool) -> Result<(), Error> {
    if records.is_empty() {
        return Ok(());
    }
    let text = match ctx.out.format {
        Format::Table => {
            let t = table(&AUDIT_HEADERS, &audit_rows(records));
            if std::mem::take(header) {
                t
            } else {
                t.lines().skip(1).map(|l| format!("{l}\n")).collect()
            }
        }
        Format::Json => records.iter().map(|r| format!("{r}\n")).collect(),
        Format::Yaml => records
            .iter()
            .map(|r| format!("---\n{}", crate::yaml::to_string(r)))
            .collect(),
    };
    crate::output::print(&text)
}

/// `POST /api/v1/enrollments {agent_id, ttl_secs, labels?}`: a one-time join token.
pub async fn enroll_token(
    ctx: &Ctx,
    id: &str,
    ttl: Option<u64>,
    labels: &[String],
) -> Result<u8, Error> {
    let mut body = json!({"agent_id": id});
    if let Some(t) = ttl {
        body["ttl_secs"] = json!(t);
    }
    if !labels.is_empty() {
        let mut m = Map::new();
        for l in labels {
            let (k, v) = key_value("--label", l)?;
            m.insert(k, Value::String(v));
        }
        body["labels"] = Value::Object(m);
    }
    let value = ctx
        .client
        .json(Method::POST, "/api/v1/enrollments", Some(&body))
        .await?;
    ctx.out.show(&value, |v| {
        format!(
            "agent:    {}\ntoken:    {}\nexpires:  {}\non the host:\n  {}\n",
            cell(&v["agent_id"]),
            cell(&v["token"]),
            cell(&v["expires_at"]),
            cell(&v["usage"])
        )
    })?;
    Ok(ExitCode::OK)
}

/// `DELETE /api/v1/agents/{id}`.
pub async fn revoke(ctx: &Ctx, id: &str) -> Result<u8, Error> {
    let value = ctx
        .client
        .json(Method::DELETE, &format!("/api/v1/agents/{}", enc(id)), None)
        .await?;
    ctx.out.show(&value, |v| {
        format!(
            "revoked {}: {} pin(s), disconnected: {}\n",
            cell(&v["agent_id"]),
            v["revoked_pins"].as_array().map_or(0, Vec::len),
            cell(&v["disconnected"])
        )
    })?;
    Ok(ExitCode::OK)
}
