//! Every read of commands, jobs, history and the audit log, filtered by the caller's scope
//! ([`crate::authz`]): an out-of-scope command or job is answered as unknown, lists and audit
//! pages leave out what the caller may not see.

use std::collections::HashMap;

use agentmesh_audit::{AuditError, AuditFilter, AuditRecord, MAX_QUERY_LIMIT};
use serde_json::Value;

use super::CommandService;
use crate::audit::events::verb_of;
use crate::auth::Principal;
use crate::authz::{decide, Action, AgentScope, AuthzError, Decision, Ids, Subject};
use crate::registry::{AgentFilter, AgentView};
use crate::store::{CommandQuery, CommandRecord, StoreError};

/// Largest history page when outputs are included (each may be up to ~1 MiB).
pub const MAX_LIMIT_WITH_OUTPUT: usize = 100;
/// Store pages a scoped history or audit read scans to fill one answer page; what is left
/// is reached with the returned cursor.
pub const MAX_SCAN_PAGES: usize = 10;

/// Audit reads, history lists with output and job views with output running at once;
/// beyond it such a read is refused at once with [`ReadError::Busy`] (503, retry), so a few
/// viewers cannot occupy the blocking pool and the store lock with file scans.
pub const MAX_HEAVY_READS: usize = 4;

/// One history or audit page and the cursor to continue from.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// What the caller may see.
    pub items: Vec<T>,
    /// Pass as `before` (history) or `since` (audit) to continue; `None`: nothing more.
    pub next: Option<String>,
}

/// A command record as JSON, without `stdout`/`stderr` unless `include_output`.
pub fn render(rec: &CommandRecord, include_output: bool) -> Value {
    let mut v = serde_json::to_value(rec).unwrap_or(Value::Null);
    if !include_output {
        if let Some(map) = v.as_object_mut() {
            map.remove("stdout");
            map.remove("stderr");
        }
    }
    v
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Out of scope or unknown (404), or not allowed (403).
    #[error(transparent)]
    Denied(#[from] AuthzError),
    /// The audit filter is malformed (400).
    #[error("{0}")]
    BadFilter(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log could not be read.
    #[error(transparent)]
    Audit(AuditError),
    /// Too many heavy reads are running ([`MAX_HEAVY_READS`]); retry shortly (503).
    #[error("too many large reads at once; retry shortly")]
    Busy,
}

impl CommandService {
    pub(super) fn heavy_read(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ReadError> {
        self.heavy_reads.try_acquire().map_err(|_| ReadError::Busy)
    }

    fn agent_scope(&self, agent_id: &str) -> Option<std::collections::BTreeMap<String, String>> {
        self.registry.scope_labels(agent_id)
    }

    /// May `caller` do `action` (read or cancel) to the stored command `rec`? One place for
    /// both, so a cancel is never scoped differently from a read. Refusals are audited by
    /// [`crate::authz::Authz::check`]; out of scope is `NotFound(not_found())`.
    pub(super) fn check_record(
        &self,
        caller: &Principal,
        action: Action,
        rec: &CommandRecord,
        not_found: impl FnOnce() -> String,
    ) -> Result<(), AuthzError> {
        let labels = self.agent_scope(&rec.agent_id);
        let subject = Subject {
            verb: Some(&rec.verb),
            agent: labels
                .as_ref()
                .map_or(AgentScope::Unknown, AgentScope::Labels),
        };
        let ids = Ids {
            agent: Some(&rec.agent_id),
            command: Some(&rec.command_id),
        };
        self.authz.check(caller, action, &subject, ids, not_found)
    }

    pub(super) fn may_read(
        &self,
        caller: &Principal,
        verb: Option<&str>,
        agent: Option<&str>,
    ) -> bool {
        let labels = agent.map(|a| self.agent_scope(a));
        let scope = match &labels {
            None => AgentScope::None,
            Some(None) => AgentScope::Unknown,
            Some(Some(l)) => AgentScope::Labels(l),
        };
        let subject = Subject { verb, agent: scope };
        decide(caller, Action::Read, &subject) == Decision::Allow
    }

    /// `GET /api/v1/agents`: the agents matching `filter` that are in `caller`'s label scope.
    pub fn agents(&self, caller: &Principal, filter: &AgentFilter) -> Vec<AgentView> {
        let mut agents = self.registry.list(filter);
        agents.retain(|a| self.may_read(caller, None, Some(&a.id)));
        agents
    }

    /// `GET /api/v1/agents/{id}`: one agent; out of scope is unknown (404).
    pub fn agent(&self, caller: &Principal, id: &str) -> Result<AgentView, ReadError> {
        match self.registry.get(id) {
            Some(view) if self.may_read(caller, None, Some(id)) => Ok(view),
            _ => Err(AuthzError::NotFound(format!("unknown agent {id:?}")).into()),
        }
    }

    /// `GET /api/v1/commands/{id}`: a command record (with output) or a job view.
    pub async fn read_one(
        &self,
        caller: &Principal,
        id: &str,
        include_output: bool,
    ) -> Result<Value, ReadError> {
        let not_found = || format!("unknown command or job {id:?}");
        if let Some(rec) = self.store.get_command(id).await? {
            self.check_record(caller, Action::Read, &rec, not_found)?;
            return Ok(render(&rec, true));
        }
        let Some(job) = self.store.get_job(id).await? else {
            return Err(AuthzError::NotFound(not_found()).into());
        };
        // A job is visible when its verb is and at least one of its targets is (or the
        // caller started it); only the visible targets are shown.
        let visible = |agent: &str| self.may_read(caller, Some(&job.verb), Some(agent));
        let own = job.requested_by == caller.name && caller.allows_verb(&job.verb);
        if !own && !job.targets.iter().any(|a| visible(a)) {
            return Err(AuthzError::NotFound(not_found()).into());
        }
        let _permit = if include_output {
            Some(self.heavy_read()?)
        } else {
            None
        };
        Ok(self
            .render_job(job.clone(), visible, include_output)
            .await?)
    }

    /// `GET /api/v1/commands`: newest first, only what `caller` may see. Unscoped callers get
    /// one store page; scoped ones up to [`MAX_SCAN_PAGES`] pages scanned.
    pub async fn list(
        &self,
        caller: &Principal,
        mut query: CommandQuery,
        include_output: bool,
    ) -> Result<Page<Value>, ReadError> {
        let cap = if include_output {
            MAX_LIMIT_WITH_OUTPUT
        } else {
            CommandQuery::MAX_LIMIT
        };
        let _permit = if include_output {
            Some(self.heavy_read()?)
        } else {
            None
        };
        let want = query.limit.clamp(1, cap);
        query.limit = want;
        query.with_output = include_output;
        let mut items = Vec::new();
        for _ in 0..MAX_SCAN_PAGES {
            let page = self.store.list_commands(&query).await?;
            let full = page.len() == want;
            for rec in &page {
                query.before = Some(rec.command_id.clone());
                if self.may_read(caller, Some(&rec.verb), Some(&rec.agent_id)) {
                    items.push(render(rec, include_output));
                    if items.len() == want {
                        return Ok(Page {
                            items,
                            next: query.before,
                        });
                    }
                }
            }
            if !full {
                return Ok(Page { items, next: None });
            }
        }
        Ok(Page {
            items,
            next: query.before,
        })
    }

    /// `GET /api/v1/audit`: records oldest first after the filter's cursor, only those
    /// `caller` may see (see [`crate::authz`] for records without an agent). Reading does not
    /// force an fsync when nothing new was appended ([`crate::audit::Audit::sync_for_read`]).
    pub async fn read_audit(
        &self,
        caller: &Principal,
        mut filter: AuditFilter,
    ) -> Result<Page<AuditRecord>, ReadError> {
        let _permit = self.heavy_read()?;
        let want = filter.limit.clamp(1, MAX_QUERY_LIMIT);
        self.audit.sync_for_read().await;
        let path = self.audit.path().to_path_buf();
        let mut items = Vec::new();
        let mut labels: HashMap<String, bool> = HashMap::new();
        for _ in 0..MAX_SCAN_PAGES {
            let (p, f) = (path.clone(), filter.clone());
            let page = tokio::task::spawn_blocking(move || agentmesh_audit::query(&p, &f))
                .await
                .map_err(|e| StoreError::Join(e.to_string()))?
                .map_err(|e| match e {
                    AuditError::InvalidFilter(m) => ReadError::BadFilter(m),
                    other => ReadError::Audit(other),
                })?;
            let full = page.len() == filter.limit.clamp(1, MAX_QUERY_LIMIT);
            for rec in page {
                filter.since_seq = Some(rec.seq);
                // Both the timestamp and the seq cursor narrow later pages; keep only seq.
                filter.since_ts = None;
                let verb = verb_of(&rec.details).map(str::to_owned);
                let key = format!("{:?}\u{0}{:?}", rec.agent_id, verb);
                let ok = *labels.entry(key).or_insert_with(|| {
                    self.may_read(caller, verb.as_deref(), rec.agent_id.as_deref())
                });
                if ok {
                    items.push(rec);
                    if items.len() == want {
                        return Ok(Page {
                            items,
                            next: filter.since_seq.map(|s| s.to_string()),
                        });
                    }
                }
            }
            if !full {
                return Ok(Page { items, next: None });
            }
        }
        Ok(Page {
            items,
            next: filter.since_seq.map(|s| s.to_string()),
        })
    }
}
