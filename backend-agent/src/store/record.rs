//! The records the store keeps, exactly as the HTTP API returns them (README, "Operator API").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lifecycle state of a command, as the API reports it in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Accepted and recorded, not yet sent to the agent.
    Pending,
    /// Sent to the agent.
    Dispatched,
    /// The agent reported that it started.
    Running,
    /// Finished with success.
    Ok,
    /// Ran and failed (non-zero exit or execution error).
    Failed,
    /// Refused by the agent (allowlist, schema, rate limit).
    Rejected,
    /// Killed on its deadline.
    Timeout,
    /// Cancelled by an operator.
    Cancelled,
    /// Never got a result (e.g. lost across a backend restart).
    Expired,
}

impl CommandState {
    /// Every state, in lifecycle order.
    pub const ALL: [CommandState; 9] = [
        CommandState::Pending,
        CommandState::Dispatched,
        CommandState::Running,
        CommandState::Ok,
        CommandState::Failed,
        CommandState::Rejected,
        CommandState::Timeout,
        CommandState::Cancelled,
        CommandState::Expired,
    ];

    /// Whether the command is over (no further transition is expected).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CommandState::Pending | CommandState::Dispatched | CommandState::Running
        )
    }

    /// The wire name (`"pending"`, `"ok"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Pending => "pending",
            CommandState::Dispatched => "dispatched",
            CommandState::Running => "running",
            CommandState::Ok => "ok",
            CommandState::Failed => "failed",
            CommandState::Rejected => "rejected",
            CommandState::Timeout => "timeout",
            CommandState::Cancelled => "cancelled",
            CommandState::Expired => "expired",
        }
    }
}

impl fmt::Display for CommandState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a [`CommandState`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command status {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for CommandState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// The `error` object of a command record: `{code, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Machine-readable code (e.g. `rate_limited`).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// One command and its result: the flat record the API returns (README, "Operator API").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Unique id (UUIDv7, so ids sort by creation time).
    pub command_id: String,
    /// Target agent.
    pub agent_id: String,
    /// Verb name.
    pub verb: String,
    /// Arguments, already redacted (secret params hashed).
    pub args: serde_json::Value,
    /// Token name of the operator who asked.
    pub requested_by: String,
    /// Current state.
    pub status: CommandState,
    /// Process exit code, when it ran.
    pub exit_code: Option<i32>,
    /// Captured standard output (capped by the agent).
    pub stdout: String,
    /// Captured standard error (capped by the agent).
    pub stderr: String,
    /// Whether output was cut at the agent's cap.
    pub truncated: bool,
    /// When the request was accepted (RFC 3339).
    pub created_at: String,
    /// When the agent started it (RFC 3339).
    pub started_at: Option<String>,
    /// When it reached a final state (RFC 3339).
    pub finished_at: Option<String>,
    /// Run time reported by the agent.
    pub duration_ms: Option<u64>,
    /// Why it did not succeed.
    pub error: Option<ErrorInfo>,
    /// Deadline given to the agent.
    pub timeout_ms: u64,
    /// The fan-out job this command belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// A fan-out job: one request run on several agents (one [`CommandRecord`] per target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Unique id.
    pub job_id: String,
    /// Verb name.
    pub verb: String,
    /// Arguments, already redacted.
    pub args: serde_json::Value,
    /// Token name of the operator who asked.
    pub requested_by: String,
    /// The selector as requested (`{ids?, labels?}`).
    pub selector: serde_json::Value,
    /// How many targets run at once.
    pub max_concurrency: u32,
    /// Failures after which the remaining targets are skipped.
    pub max_errors: u32,
    /// When the job was accepted (RFC 3339).
    pub created_at: String,
    /// Agent ids the selector resolved to, in dispatch order.
    pub targets: Vec<String>,
}

/// Filters for [`CommandStore::list_commands`](super::CommandStore::list_commands); results are newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandQuery {
    /// Only commands for this agent.
    pub agent: Option<String>,
    /// Only commands in this state.
    pub status: Option<CommandState>,
    /// Only commands of this job.
    pub job_id: Option<String>,
    /// Page size; clamped to `1..=`[`CommandQuery::MAX_LIMIT`].
    pub limit: usize,
    /// Cursor: only commands with an id below this one (the last id of the previous page).
    pub before: Option<String>,
    /// Whether `stdout`/`stderr` are read; `false` returns them empty without loading them
    /// (history lists, where up to a page of 1 MiB outputs would otherwise be materialised).
    pub with_output: bool,
}

impl CommandQuery {
    /// Page size when none is given.
    pub const DEFAULT_LIMIT: usize = 100;
    /// Largest page size.
    pub const MAX_LIMIT: usize = 1000;

    /// The page size actually used.
    pub fn effective_limit(&self) -> usize {
        self.limit.clamp(1, Self::MAX_LIMIT)
    }

    /// The filters (the cursor included) as SQL conditions, each `column op` and its
    /// value; the store appends its own placeholder.
    pub fn sql_conditions(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(agent) = &self.agent {
            out.push(("agent_id =", agent.clone()));
        }
        if let Some(status) = self.status {
            out.push(("status =", status.as_str().to_owned()));
        }
        if let Some(job) = &self.job_id {
            out.push(("job_id =", job.clone()));
        }
        if let Some(before) = &self.before {
            out.push(("command_id <", before.clone()));
        }
        out
    }

    /// Whether `rec` passes every filter (the cursor included).
    pub fn matches(&self, rec: &CommandRecord) -> bool {
        self.agent.as_ref().is_none_or(|a| *a == rec.agent_id)
            && self.status.is_none_or(|s| s == rec.status)
            && self
                .job_id
                .as_ref()
                .is_none_or(|j| rec.job_id.as_ref() == Some(j))
            && self
                .before
                .as_ref()
                .is_none_or(|b| rec.command_id.as_str() < b.as_str())
    }
}

impl Default for CommandQuery {
    fn default() -> Self {
        CommandQuery {
            agent: None,
            status: None,
            job_id: None,
            limit: Self::DEFAULT_LIMIT,
            before: None,
            with_output: true,
        }
    }
}
