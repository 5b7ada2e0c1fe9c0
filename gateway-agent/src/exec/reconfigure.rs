//! A config reload reaching the executor: new verbs and limits for commands from now on;
//! commands already running keep the verb and permit they started with.

use std::collections::HashMap;
use std::sync::Arc;

use super::verb::{self, Verb};
use super::{lock, ExecError, Executor};
use crate::config::VerbConfig;

/// Verbs by name.
pub(super) type VerbTable = HashMap<String, Arc<Verb>>;

impl Executor {
    /// Swaps in `verbs` and the limits of a reloaded config. Nothing changes on error.
    pub fn reconfigure(
        &self,
        verbs: &[VerbConfig],
        max_concurrency: u32,
        commands_per_minute: u32,
    ) -> Result<(), ExecError> {
        let table = verb::table(verbs).map_err(ExecError::Verb)?;
        *self.inner.verbs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        lock(&self.inner.limits).reconfigure(max_concurrency, commands_per_minute);
        Ok(())
    }

    /// The verbs in force now.
    pub(super) fn verbs(&self) -> Arc<VerbTable> {
        self.inner
            .verbs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
