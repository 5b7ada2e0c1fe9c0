//! One module per group of subcommands; [`dispatch`] resolves the connection and runs one.

mod admin;
mod agents;
mod fanout;
mod records;
mod run;

use clap::CommandFactory as _;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::output::Out;
use crate::{profile, Error, ExitCode};

/// What a subcommand needs.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// How to print.
    pub out: Out,
}

/// Runs the command; returns the exit code.
pub async fn dispatch(cli: Cli) -> Result<u8, Error> {
    if let Command::Completions { shell } = cli.command {
        let mut command = Cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut command, "meshctl", &mut buf);
        crate::output::print(&String::from_utf8_lossy(&buf))?;
        return Ok(ExitCode::OK);
    }
    let path = profile::default_path(
        std::env::var("XDG_CONFIG_HOME").ok().as_deref(),
        std::env::var("HOME").ok().as_deref(),
    );
    let conn = profile::resolve(&cli.global, path.as_deref())?;
    let ctx = Ctx {
        client: Client::new(&conn)?,
        out: Out::from_env(cli.global.output),
    };
    match cli.command {
        Command::Agents { labels, connected } => agents::list(&ctx, &labels, connected).await,
        Command::Agent { id } => agents::one(&ctx, &id).await,
        Command::Run {
            id,
            verb,
            params,
            timeout,
            no_wait,
        } => run::run(&ctx, &id, &verb, &params, timeout, no_wait).await,
        Command::Fanout(args) => fanout::fanout(&ctx, args).await,
        Command::History {
            agent,
            status,
            limit,
        } => records::history(&ctx, agent, status, limit).await,
        Command::Show { id } => records::show(&ctx, &id).await,
        Command::Cancel { id } => records::cancel(&ctx, &id).await,
        Command::Audit {
            since,
            agent,
            actor,
            kind,
            limit,
            follow,
        } => {
            let filter = admin::AuditFilter {
                since,
                agent,
                actor,
                kind,
                limit,
            };
            admin::audit(&ctx, filter, follow).await
        }
        Command::EnrollToken { id, ttl, labels } => {
            admin::enroll_token(&ctx, &id, ttl, &labels).await
        }
        Command::Revoke { id } => admin::revoke(&ctx, &id).await,
        Command::Completions { .. } => Ok(ExitCode::OK),
    }
}

/// A query string from pairs whose value is present (`?a=1&b=2`, or "").
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", crate::client::enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}
