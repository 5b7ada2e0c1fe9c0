//! `job_progress`: a tally per fan-out job, fed by the final `command_status` of each target,
//! so progress needs no store read. Bounded by [`MAX_TRACKED_JOBS`].

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{json, Value};
use tracing::debug;

use super::{EventBus, Family, State, MAX_TRACKED_JOBS};
use crate::clock;
use crate::store::{CommandRecord, CommandState, JobRecord};
use crate::sync::lock;

/// One job's counts.
pub(super) struct JobTally {
    verb: String,
    targets: Arc<[String]>,
    done: HashSet<String>,
    ok: u64,
    failed: u64,
    skipped: u64,
}

impl EventBus {
    /// A fan-out job was recorded: starts its tally and publishes its first `job_progress`.
    pub fn job_started(&self, job: &JobRecord) {
        let tally = JobTally {
            verb: job.verb.clone(),
            targets: Arc::from(job.targets.clone()),
            done: HashSet::new(),
            ok: 0,
            failed: 0,
            skipped: 0,
        };
        let mut st = lock(&self.shared.state);
        if st.job_order.len() >= MAX_TRACKED_JOBS {
            if let Some(old) = st.job_order.pop_front() {
                st.jobs.remove(&old);
                debug!(job.id = %old, "job progress no longer tracked (bound reached)");
            }
        }
        st.job_order.push_back(job.job_id.clone());
        let progress = progress_of(&job.job_id, &tally);
        st.jobs.insert(job.job_id.clone(), tally);
        self.push_progress(&mut st, progress);
    }

    pub(super) fn job_target_done(&self, job_id: &str, rec: &CommandRecord) {
        let mut st = lock(&self.shared.state);
        let Some(tally) = st.jobs.get_mut(job_id) else {
            return;
        };
        if !tally.done.insert(rec.agent_id.clone()) {
            return;
        }
        let skipped = rec.error.as_ref().is_some_and(|e| e.code == "skipped");
        match rec.status {
            _ if skipped => tally.skipped += 1,
            CommandState::Ok => tally.ok += 1,
            _ => tally.failed += 1,
        }
        let progress = progress_of(job_id, tally);
        if progress.3 {
            st.jobs.remove(job_id);
            st.job_order.retain(|j| j != job_id);
        }
        self.push_progress(&mut st, progress);
    }

    fn push_progress(&self, st: &mut State, (job_id, verb, targets, finished, summary): Progress) {
        let data = json!({
            "job_id": job_id, "verb": verb, "summary": summary, "finished": finished,
            "at": clock::now_rfc3339(),
        });
        self.push(
            st,
            "job_progress",
            Family::Job,
            (None, Some(&verb), targets),
            data,
        );
    }
}

/// (job id, verb, targets, finished, summary).
type Progress = (String, String, Arc<[String]>, bool, Value);

fn progress_of(job_id: &str, t: &JobTally) -> Progress {
    let total = t.targets.len() as u64;
    let done = t.ok + t.failed + t.skipped;
    let summary = json!({
        "targets": total, "ok": t.ok, "failed": t.failed,
        "pending": total.saturating_sub(done), "skipped": t.skipped,
    });
    let finished = done >= total;
    (
        job_id.to_owned(),
        t.verb.clone(),
        t.targets.clone(),
        finished,
        summary,
    )
}
