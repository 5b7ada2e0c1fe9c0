//! What the agent does with `command` and `cancel` frames.
//!
//! This issue only connects the mesh: every command is answered with a `rejected` result
//! (`unknown_verb` for a verb this agent does not advertise, `not_implemented` otherwise).
//! Execution replaces [`Commands::handle_command`]; the session only needs the frame it returns.

use std::collections::BTreeSet;

use agentmesh_protocol::{CommandFrame, CommandStatus, ErrorBody, ResultFrame, VerbSpec};
use tracing::{info, warn};

/// The agent's command handling for one process (lives across sessions).
#[derive(Debug)]
pub struct Commands {
    verbs: BTreeSet<String>,
}

impl Commands {
    /// Handles commands for the advertised `verbs`.
    pub fn new(verbs: &[VerbSpec]) -> Self {
        Commands {
            verbs: verbs.iter().map(|v| v.name.clone()).collect(),
        }
    }

    /// Answers one `command` with its `result`.
    pub fn handle_command(&mut self, command: &CommandFrame) -> ResultFrame {
        let error = if self.verbs.contains(&command.verb) {
            ErrorBody::new(
                "not_implemented",
                format!(
                    "verb {:?} is advertised but this agent build does not execute commands yet",
                    command.verb
                ),
            )
        } else {
            ErrorBody::new(
                "unknown_verb",
                format!("this agent does not offer verb {:?}", command.verb),
            )
        };
        info!(
            command.id = %command.command_id,
            command.verb = %command.verb,
            requested_by = %command.requested_by,
            code = %error.code,
            "command rejected"
        );
        ResultFrame {
            command_id: command.command_id.clone(),
            status: CommandStatus::Rejected,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            started_at: None,
            duration_ms: None,
            error: Some(error),
            signature: None,
        }
    }

    /// Handles a `cancel`; nothing runs yet, so there is nothing to stop.
    pub fn handle_cancel(&mut self, command_id: &str) {
        warn!(command.id = %command_id, "cancel for a command that is not running");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(verb: &str) -> CommandFrame {
        CommandFrame {
            command_id: "c1".into(),
            verb: verb.into(),
            args: Default::default(),
            timeout_ms: None,
            requested_by: "ops".into(),
            issued_at: String::new(),
        }
    }

    #[test]
    fn rejects_with_a_code() {
        let mut c = Commands::new(&crate::config::builtin_verbs());
        let r = c.handle_command(&command("ping"));
        assert_eq!(r.status, CommandStatus::Rejected);
        assert_eq!(r.command_id, "c1");
        assert_eq!(r.error.map(|e| e.code).as_deref(), Some("not_implemented"));
        let r = c.handle_command(&command("rm"));
        assert_eq!(r.error.map(|e| e.code).as_deref(), Some("unknown_verb"));
    }
}
