//! [`MemoryStore`]: the store in a map behind a mutex, with the same semantics as SQLite.
//!
//! Meant for unit tests of other modules; nothing survives the process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use super::{CommandQuery, CommandRecord, CommandState, CommandStore, JobRecord, StoreError};
use crate::clock;

#[derive(Default)]
struct Inner {
    // Ordered by id: ids are UUIDv7, so this is creation order (as in SQLite's index).
    commands: BTreeMap<String, CommandRecord>,
    events: HashMap<String, Vec<(CommandState, String)>>,
    jobs: HashMap<String, JobRecord>,
}

/// An in-memory [`CommandStore`].
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below completes before it could panic, so a poisoned map is intact.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CommandStore for MemoryStore {
    fn insert_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.commands.contains_key(&rec.command_id) {
            return Err(StoreError::Duplicate(rec.command_id.clone()));
        }
        inner.commands.insert(rec.command_id.clone(), rec.clone());
        inner.events.insert(
            rec.command_id.clone(),
            vec![(rec.status, rec.created_at.clone())],
        );
        Ok(())
    }

    fn update_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let stored = inner
            .commands
            .get_mut(&rec.command_id)
            .ok_or_else(|| StoreError::NotFound(rec.command_id.clone()))?;
        let changed = stored.status != rec.status;
        stored.status = rec.status;
        stored.exit_code = rec.exit_code;
        stored.stdout.clone_from(&rec.stdout);
        stored.stderr.clone_from(&rec.stderr);
        stored.truncated = rec.truncated;
        stored.started_at.clone_from(&rec.started_at);
        stored.finished_at.clone_from(&rec.finished_at);
        stored.duration_ms = rec.duration_ms;
        stored.error.clone_from(&rec.error);
        if changed {
            inner
                .events
                .entry(rec.command_id.clone())
                .or_default()
                .push((rec.status, clock::now_rfc3339()));
        }
        Ok(())
    }

    fn get_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        Ok(self.lock().commands.get(id).cloned())
    }

    fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError> {
        Ok(self
            .lock()
            .commands
            .values()
            .rev()
            .filter(|rec| q.matches(rec))
            .take(q.effective_limit())
            .cloned()
            .collect())
    }

    fn command_events(&self, id: &str) -> Result<Vec<(CommandState, String)>, StoreError> {
        Ok(self.lock().events.get(id).cloned().unwrap_or_default())
    }

    fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.jobs.contains_key(&job.job_id) {
            return Err(StoreError::Duplicate(job.job_id.clone()));
        }
        inner.jobs.insert(job.job_id.clone(), job.clone());
        Ok(())
    }

    fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.lock().jobs.get(id).cloned())
    }

    fn unfinished_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
        Ok(self
            .lock()
            .commands
            .values()
            .filter(|rec| !rec.status.is_final())
            .cloned()
            .collect())
    }

    fn prune(&self, keep_newest: usize) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let doomed: Vec<(String, Option<String>)> = inner
            .commands
            .values()
            .rev()
            .filter(|rec| rec.status.is_final())
            .skip(keep_newest)
            .map(|rec| (rec.command_id.clone(), rec.job_id.clone()))
            .collect();
        let mut touched_jobs = HashSet::new();
        for (id, job) in &doomed {
            inner.commands.remove(id);
            inner.events.remove(id);
            touched_jobs.extend(job.clone());
        }
        // Only jobs that lost commands here: a job just created may not have any yet.
        let live: HashSet<&String> = inner
            .commands
            .values()
            .filter_map(|rec| rec.job_id.as_ref())
            .collect();
        let orphans: Vec<String> = touched_jobs
            .into_iter()
            .filter(|job| !live.contains(job))
            .collect();
        for job in orphans {
            inner.jobs.remove(&job);
        }
        Ok(doomed.len())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        crate::store::tests::conformance(&MemoryStore::new());
    }
}
