//! `meshctl agents` and `meshctl agent ID`.

use std::collections::BTreeMap;

use agentmesh_protocol::VerbSpec;
use serde_json::Value;

use super::Ctx;
use crate::cli::key_value;
use crate::cli::Format;
use crate::client::enc;
use crate::output::{cell, clean, labels as fmt_labels, table, Out};
use crate::{Error, ExitCode};

/// `GET /api/v1/agents?connected=true&label=k=v...`.
pub async fn list(ctx: &Ctx, labels: &[String], connected: bool) -> Result<u8, Error> {
    let mut query = Vec::new();
    if connected {
        query.push("connected=true".to_owned());
    }
    for l in labels {
        key_value("--label", l)?;
        query.push(format!("label={}", enc(l)));
    }
    let path = if query.is_empty() {
        "/api/v1/agents".to_owned()
    } else {
        format!("/api/v1/agents?{}", query.join("&"))
    };
    let value = ctx.client.get(&path).await?;
    let expiry = if ctx.out.format == Format::Table {
        cert_expiry(ctx).await
    } else {
        BTreeMap::new()
    };
    ctx.out
        .show(&value, |v| agents_table(&ctx.out, v, &expiry))?;
    Ok(ExitCode::OK)
}

/// Seconds until each agent's certificate expires, from `/metrics`
/// (`agentmesh_agent_cert_expiry_seconds{agent="ID"}`): the agent routes do not report it.
/// Empty when `/metrics` cannot be read (a front door that does not pass it on).
async fn cert_expiry(ctx: &Ctx) -> BTreeMap<String, f64> {
    match ctx.client.text("/metrics").await {
        Ok(text) => parse_expiry(&text),
        Err(_) => BTreeMap::new(),
    }
}

/// Parses the expiry series out of Prometheus text.
pub fn parse_expiry(text: &str) -> BTreeMap<String, f64> {
    const PREFIX: &str = "agentmesh_agent_cert_expiry_seconds{agent=\"";
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(PREFIX)?;
            let (id, value) = rest.split_once("\"}")?;
            let secs: f64 = value.trim().parse().ok()?;
            let id = id.replace("\\\"", "\"").replace("\\\\", "\\");
            secs.is_finite().then_some((id, secs))
        })
        .collect()
}

/// `2027-11-29 (364d)`, or `... (expired)`.
fn expiry_cell(secs: Option<f64>) -> String {
    let Some(secs) = secs else {
        return "-".to_owned();
    };
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs as i64);
    let date = at.date();
    if secs < 0.0 {
        format!("{date} (expired)")
    } else {
        format!("{date} ({}d)", (secs / 86_400.0).floor() as i64)
    }
}

/// The state word of an agent.
fn state(out: &Out, agent: &Value) -> String {
    if agent["revoked"].as_bool() == Some(true) {
        out.paint("revoked", "31")
    } else if agent["connected"].as_bool() == Some(true) {
        out.paint("connected", "32")
    } else {
        out.paint("offline", "33")
    }
}

fn agents_table(out: &Out, v: &Value, expiry: &BTreeMap<String, f64>) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = v["agents"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|a| {
            vec![
                cell(&a["id"]),
                state(out, a),
                cell(&a["site"]),
                cell(&a["hostname"]),
                fmt_labels(&a["labels"]),
                cell(&a["version"]),
                cell(&a["last_seen"]),
                expiry_cell(a["id"].as_str().and_then(|id| expiry.get(id).copied())),
            ]
        })
        .collect();
    table(
        &[
            "id",
            "state",
            "site",
            "hostname",
            "labels",
            "version",
            "last seen",
            "cert expiry",
        ],
        &rows,
    )
}

/// `GET /api/v1/agents/{id}`.
pub async fn one(ctx: &Ctx, id: &str) -> Result<u8, Error> {
    let value = ctx
        .client
        .get(&format!("/api/v1/agents/{}", enc(id)))
        .await?;
    let expiry = if ctx.out.format == Format::Table {
        cert_expiry(ctx).await.get(id).copied()
    } else {
        None
    };
    ctx.out
        .show(&value, |v| agent_detail(&ctx.out, v, expiry))?;
    Ok(ExitCode::OK)
}

fn agent_detail(out: &Out, a: &Value, expiry: Option<f64>) -> String {
    let mut text = String::new();
    let fields = [
        ("id", cell(&a["id"])),
        ("state", state(out, a)),
        ("site", cell(&a["site"])),
        ("hostname", cell(&a["hostname"])),
        ("labels", fmt_labels(&a["labels"])),
        ("version", cell(&a["version"])),
        ("pin", cell(&a["pin"])),
        ("remote addr", cell(&a["remote_addr"])),
        ("connected since", cell(&a["connected_since"])),
        ("last seen", cell(&a["last_seen"])),
        ("cert expiry", expiry_cell(expiry)),
    ];
    for (k, v) in fields {
        text.push_str(&format!("{:<16} {v}\n", format!("{k}:")));
    }
    let verbs: Vec<VerbSpec> = serde_json::from_value(a["verbs"].clone()).unwrap_or_default();
    text.push_str("\nverbs:\n");
    let mut rows = Vec::new();
    for verb in &verbs {
        if verb.params.is_empty() {
            rows.push(vec![
                clean(&verb.name),
                "-".to_owned(),
                "-".to_owned(),
                clean(&verb.description),
            ]);
        }
        for (i, (name, p)) in verb.params.iter().enumerate() {
            let mut schema = crate::args::describe(&p.kind);
            if p.required {
                schema.push_str(", required");
            }
            if p.secret {
                schema.push_str(", secret");
            }
            rows.push(vec![
                if i == 0 {
                    clean(&verb.name)
                } else {
                    String::new()
                },
                clean(name),
                clean(&schema),
                if i == 0 {
                    clean(&verb.description)
                } else {
                    String::new()
                },
            ]);
        }
    }
    text.push_str(&table(&["verb", "param", "schema", "description"], &rows));
    text
}

/// The schema of `verb` on agent `id` (for `run`): `Err` when it is not advertised.
pub async fn verb_spec(ctx: &Ctx, id: &str, verb: &str) -> Result<VerbSpec, Error> {
    let agent = ctx
        .client
        .get(&format!("/api/v1/agents/{}", enc(id)))
        .await?;
    let verbs: Vec<VerbSpec> = serde_json::from_value(agent["verbs"].clone())
        .map_err(|e| Error::BadAnswer(format!("verbs of {id}: {e}")))?;
    let names: Vec<String> = verbs.iter().map(|v| v.name.clone()).collect();
    verbs.into_iter().find(|v| v.name == verb).ok_or_else(|| {
        Error::usage(format!(
            "agent {id} does not advertise verb {verb:?} (it has: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_comes_from_the_metrics_text() {
        let text = "# TYPE agentmesh_agent_cert_expiry_seconds gauge\n\
agentmesh_agent_cert_expiry_seconds{agent=\"edge-01\"} 86400\n\
agentmesh_agent_cert_expiry_seconds{agent=\"edge-02\"} -5\n\
agentmesh_agent_cert_expiry_min_seconds -5\n";
        let m = parse_expiry(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m["edge-01"], 86400.0);
        assert!(expiry_cell(Some(m["edge-01"])).ends_with("(1d)"));
        assert!(expiry_cell(Some(m["edge-02"])).ends_with("(expired)"));
        assert_eq!(expiry_cell(None), "-");
    }
}
