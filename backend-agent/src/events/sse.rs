//! `GET /api/v1/events`: the event bus as Server-Sent Events (README, "Event stream"):
//! `Last-Event-ID` (or `?last_event_id=`) resume, `?types=` families,
//! the caller's scope applied to every event, a `: keep-alive` comment every
//! [`HEARTBEAT`].

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::bus::{Event, Family, SubscribeError, Subscription};
use crate::api::{ApiError, AppState, Caller};
use crate::auth::Principal;
use crate::authz::{decide, Action, AgentScope, Decision, Subject};
use crate::registry::Registry;

/// Interval of the `: keep-alive` comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Resume after this id (the `Last-Event-ID` header wins when both are given).
    pub last_event_id: Option<u64>,
    /// Comma list of families: `agent`, `command`, `job` (default: all).
    pub types: Option<String>,
}

/// The SSE handler.
pub async fn stream(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let families = match &query.types {
        None => None,
        Some(list) => Some(
            list.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    Family::parse(s.trim()).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "types: unknown family {s:?} (known: agent, command, job)"
                        ))
                    })
                })
                .collect::<Result<HashSet<Family>, ApiError>>()?,
        ),
    };
    let last_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id"))?,
        ),
        None => query.last_event_id,
    };
    let sub = state
        .registry
        .events
        .subscribe(last_id)
        .map_err(|e| match e {
            SubscribeError::Busy => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string());
                e.retry_after = Some(5);
                e
            }
            SubscribeError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
        })?;
    let reader = Reader::new(sub, state.registry.clone(), caller.principal, families);
    let body = Body::from_stream(futures_util::stream::unfold(reader, |mut r| async move {
        r.next().await.map(|chunk| (Ok::<_, Infallible>(chunk), r))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // nginx: pass events through as they come instead of buffering the response.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// One subscriber's side: its queue, the filter, the heartbeat.
struct Reader {
    sub: Subscription,
    registry: Arc<Registry>,
    principal: Principal,
    families: Option<HashSet<Family>>,
    /// Written before anything live: the opening comment, `reset`, the replay.
    backlog: VecDeque<Bytes>,
    heartbeat: tokio::time::Interval,
    ended: bool,
}

impl Reader {
    fn new(
        mut sub: Subscription,
        registry: Arc<Registry>,
        principal: Principal,
        families: Option<HashSet<Family>>,
    ) -> Self {
        let mut backlog = VecDeque::new();
        // Something at once, so a client sees the stream open before the first event.
        backlog.push_back(Bytes::from_static(b": agentmesh events\nretry: 3000\n\n"));
        if let Some(reason) = sub.reset {
            let data = json!({"reason": reason, "at": crate::clock::now_rfc3339()});
            backlog.push_back(Bytes::from(format!(
                "id: {}\nevent: reset\ndata: {data}\n\n",
                sub.reset_id
            )));
        }
        let replay = std::mem::take(&mut sub.replay);
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reader = Reader {
            sub,
            registry,
            principal,
            families,
            backlog,
            heartbeat,
            ended: false,
        };
        for e in replay {
            if reader.visible(&e) {
                reader.backlog.push_back(Bytes::from(e.to_sse()));
            }
        }
        reader
    }

    /// The next chunk to write; `None` ends the stream (dropped for falling behind, or
    /// shutdown).
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(b) = self.backlog.pop_front() {
            return Some(b);
        }
        loop {
            if self.ended || self.sub.dropped.load(Ordering::Relaxed) {
                if !self.ended {
                    self.ended = true;
                    // Said once; the client reconnects with its last id and may get `reset`.
                    return Some(Bytes::from_static(
                        b": closed: reader too slow or shutdown\n\n",
                    ));
                }
                return None;
            }
            tokio::select! {
                event = self.sub.rx.recv() => match event {
                    Some(e) if self.visible(&e) => return Some(Bytes::from(e.to_sse())),
                    Some(_) => continue,
                    None => self.ended = true,
                },
                _ = self.heartbeat.tick() => {
                    return Some(Bytes::from_static(b": keep-alive\n\n"));
                }
            }
        }
    }

    /// The family filter and the read scope (the rule of the read routes, see [`crate::authz`]).
    fn visible(&self, e: &Event) -> bool {
        if self
            .families
            .as_ref()
            .is_some_and(|f| !f.contains(&e.family))
        {
            return false;
        }
        let allowed = |agent: Option<&str>| {
            let labels = agent.and_then(|a| self.registry.scope_labels(a));
            let scope = match (agent, &labels) {
                (None, _) => AgentScope::None,
                (Some(_), None) => AgentScope::Unknown,
                (Some(_), Some(l)) => AgentScope::Labels(l),
            };
            let subject = Subject {
                verb: e.verb.as_deref(),
                agent: scope,
            };
            decide(&self.principal, Action::Read, &subject) == Decision::Allow
        };
        match e.family {
            // Without a label scope the agents do not matter, only the verb: no lookups.
            Family::Job if e.targets.is_empty() || self.principal.labels.is_empty() => {
                allowed(None)
            }
            Family::Job => e.targets.iter().all(|t| allowed(Some(t))),
            _ => allowed(e.agent_id.as_deref()),
        }
    }
}

/// The bus's numbers for `/metrics`: (subscribers, published, dropped).
pub fn stats(registry: &Registry) -> (usize, u64, u64) {
    let bus = &registry.events;
    (bus.subscribers(), bus.published(), bus.dropped())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use std::collections::BTreeMap;

    fn principal(labels: &[(&str, &str)]) -> Principal {
        Principal {
            name: "t".into(),
            role: Role::Viewer,
            verbs: vec!["*".into()],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    async fn text(r: &mut Reader) -> String {
        let chunk = r.next().await.unwrap_or_default();
        String::from_utf8_lossy(&chunk).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn scope_filter_heartbeat_and_end() {
        let registry = Arc::new(Registry::default());
        let labels = |v: &str| BTreeMap::from([("role".to_owned(), v.to_owned())]);
        registry.set_enrolled_labels("in", labels("db"));
        registry.set_enrolled_labels("out", labels("web"));
        let sub = registry.events.subscribe(None).expect("subscribe");
        let scoped = principal(&[("role", "db")]);
        let mut r = Reader::new(sub, registry.clone(), scoped, None);
        assert!(text(&mut r).await.starts_with(": agentmesh events"));
        registry.events.agent_disconnected("out", "x");
        registry.events.agent_disconnected("in", "x");
        let e = text(&mut r).await;
        assert!(
            e.contains("event: agent_disconnected\n") && e.contains("\"agent_id\":\"in\""),
            "{e}"
        );
        // Nothing else is visible: the next chunk is the heartbeat (the paused clock jumps).
        assert_eq!(text(&mut r).await, ": keep-alive\n\n");
        registry.events.close();
        assert!(text(&mut r).await.starts_with(": closed"));
        assert!(r.next().await.is_none());
    }

    #[tokio::test]
    async fn families_filter_and_reset_comes_first() {
        let registry = Arc::new(Registry::default());
        registry.events.agent_disconnected("a", "x");
        let sub = registry.events.subscribe(Some(1)).expect("subscribe");
        let only_jobs = Some(HashSet::from([Family::Job]));
        let mut r = Reader::new(sub, registry.clone(), principal(&[]), only_jobs);
        assert!(text(&mut r).await.starts_with(": agentmesh events"));
        assert!(text(&mut r).await.contains("event: reset\n"));
        // The replayed agent event is filtered out; the stream waits for a job event.
        assert!(r.backlog.is_empty());
    }

    #[tokio::test]
    async fn a_job_is_visible_only_when_every_target_is_in_scope() {
        let registry = Arc::new(Registry::default());
        let labels = |v: &str| BTreeMap::from([("role".to_owned(), v.to_owned())]);
        registry.set_enrolled_labels("in", labels("db"));
        registry.set_enrolled_labels("out", labels("web"));
        let job = |targets: &[&str]| Event {
            id: 1,
            kind: "job_progress",
            family: Family::Job,
            agent_id: None,
            verb: Some("ping".into()),
            targets: targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .into(),
            data: "{}".into(),
        };
        let sub = registry.events.subscribe(None).expect("subscribe");
        let r = Reader::new(sub, registry.clone(), principal(&[("role", "db")]), None);
        assert!(r.visible(&job(&["in"])));
        assert!(!r.visible(&job(&["in", "out"])));
        assert!(
            !r.visible(&job(&["gone"])),
            "an unknown agent is outside a label scope"
        );
        let sub = registry.events.subscribe(None).expect("subscribe");
        let unscoped = Reader::new(sub, registry.clone(), principal(&[]), None);
        assert!(unscoped.visible(&job(&["in", "out", "gone"])));
    }
}
