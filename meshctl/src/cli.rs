//! The command line (clap derive). Connection flags are global, so they work before or after
//! the subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// meshctl: drive an agentmesh backend through its HTTP API.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Connection and output flags.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Backend API URL (http://host:port or https://front-door).
    #[arg(long, global = true, env = "AGENTMESH_URL")]
    pub url: Option<String>,
    /// Bearer token.
    #[arg(long, global = true, env = "AGENTMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed an https front door's certificate.
    #[arg(long, global = true, env = "AGENTMESH_CA")]
    pub ca: Option<PathBuf>,
    /// Profile in ~/.config/agentmesh/meshctl.toml (default: "default").
    #[arg(long, global = true, env = "AGENTMESH_PROFILE")]
    pub profile: Option<String>,
    /// Output format (default: table on a terminal, json otherwise).
    #[arg(long, short = 'o', global = true, value_enum)]
    pub output: Option<Format>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
    /// The API's JSON as YAML.
    Yaml,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List agents.
    Agents {
        /// Only agents carrying this label (repeatable).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Only connected agents.
        #[arg(long)]
        connected: bool,
    },
    /// One agent with its verbs and their parameter schemas.
    Agent {
        /// Agent id.
        id: String,
    },
    /// Run a verb on one agent; prints its output and exits with its exit code.
    Run {
        /// Agent id.
        id: String,
        /// Verb name.
        verb: String,
        /// Arguments as param=value (typed by the verb's schema).
        #[arg(value_name = "PARAM=VALUE")]
        params: Vec<String>,
        /// Timeout in seconds (default: the verb's).
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
        /// Print the command id and return without waiting.
        #[arg(long = "async")]
        no_wait: bool,
    },
    /// Run a verb on many agents with live progress, then a per-agent summary.
    Fanout(FanoutArgs),
    /// Command history, newest first.
    History {
        /// Only this agent's commands.
        #[arg(long)]
        agent: Option<String>,
        /// Only commands in this status.
        #[arg(long)]
        status: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One command (with its output) or fan-out job.
    Show {
        /// Command or job id.
        id: String,
    },
    /// Cancel a command.
    Cancel {
        /// Command id.
        id: String,
    },
    /// Audit records, oldest first.
    Audit {
        /// Records after this seq number or RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only records about this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only records by this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only records of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Keep printing new records (polls `since`) until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Create a one-time join token for an agent (admin).
    EnrollToken {
        /// Agent id.
        id: String,
        /// Lifetime in seconds.
        #[arg(long, value_name = "S")]
        ttl: Option<u64>,
        /// Authoritative label for the agent (repeatable).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Revoke an agent: every pin, and disconnect it now (admin).
    Revoke {
        /// Agent id.
        id: String,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `meshctl fanout`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("targets").required(true).args(["labels", "ids"])))]
pub struct FanoutArgs {
    /// Target agents carrying this label (repeatable; all must match).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Target these agent ids (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<String>,
    /// Verb name.
    pub verb: String,
    /// Arguments as param=value (typed by the verb's schema).
    #[arg(value_name = "PARAM=VALUE")]
    pub params: Vec<String>,
    /// At most this many targets in flight.
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// Stop dispatching after this many failures.
    #[arg(long)]
    pub max_errors: Option<u32>,
    /// Per-target timeout in seconds (default: the verb's).
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    /// Live progress on stderr: on a terminal only (auto), always, or never.
    #[arg(long, value_enum, default_value_t = When::Auto)]
    pub progress: When,
}

/// When to do something that suits a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum When {
    /// When stderr is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Splits `k=v` (labels, selectors); the error names the flag.
pub fn key_value(flag: &str, s: &str) -> Result<(String, String), crate::Error> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(crate::Error::usage(format!(
            "{flag} takes key=value, not {s:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fanout_needs_targets() {
        assert!(Cli::try_parse_from(["meshctl", "fanout", "ping"]).is_err());
        let ok = Cli::try_parse_from(["meshctl", "fanout", "--ids", "a,b", "ping", "x=1"]);
        assert!(ok.is_ok());
    }
}
