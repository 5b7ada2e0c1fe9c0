//! Serving handovers against an in-memory store and a session without a socket: exactly one
//! dispatch per command however often it is handed over, nothing past its deadline, nothing
//! that is no longer `pending`.

use std::sync::Arc;

use agentmesh_protocol::{CommandFrame, HelloFrame, HubFrame};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::registry::{LiveSession, Registry};
use crate::store::tests::command;

struct Fixture {
    service: Arc<CommandService>,
    frames: mpsc::Receiver<Box<HubFrame>>,
    _base: crate::commands::tests::Fixture,
}

/// A service whose registry holds a live session of `edge-01` (frames land in `frames`).
fn fixture() -> Fixture {
    let registry = Arc::new(Registry::default());
    registry.enrol("edge-01", "pin");
    let hello: HelloFrame = serde_json::from_value(serde_json::json!({
        "protocol": 1, "agent_id": "edge-01", "verbs": [{"name": "ping"}],
    }))
    .expect("hello");
    let (tx, frames) = mpsc::channel(8);
    let (close, _) = watch::channel(None);
    let session = LiveSession {
        session_id: "s".into(),
        tx,
        close: Arc::new(close),
        shared: Arc::default(),
    };
    registry
        .attach(hello, "pin", "127.0.0.1:1", session)
        .expect("attach");
    let base =
        crate::commands::tests::start_service(registry, crate::commands::Settings::default());
    Fixture {
        service: base.service.clone(),
        frames,
        _base: base,
    }
}

fn handover(id: &str, agent: &str, deadline_ms: i64) -> Handover {
    Handover {
        from: "r0".into(),
        agent_id: agent.into(),
        frame: CommandFrame {
            command_id: id.into(),
            verb: "ping".into(),
            args: serde_json::Map::new(),
            timeout_ms: Some(30_000),
            requested_by: "ops".into(),
            issued_at: clock::now_rfc3339(),
        },
        deadline_ms,
    }
}

async fn pending(f: &Fixture, id: &str) {
    let mut rec = command(id, "edge-01", CommandState::Pending);
    rec.created_at = clock::now_rfc3339();
    f.service
        .store()
        .insert_command(&rec)
        .await
        .expect("insert");
}

async fn status(f: &Fixture, id: &str) -> CommandState {
    let rec = f.service.store().get_command(id).await.expect("get");
    rec.expect("record").status
}

fn later() -> i64 {
    clock::unix_ms() + 60_000
}

#[tokio::test]
async fn a_command_handed_over_twice_is_dispatched_once_with_its_id() {
    let mut f = fixture();
    pending(&f, "cmd-1").await;
    let h = handover("cmd-1", "edge-01", later());
    assert_eq!(f.service.serve_handover(&h).await, HandedOver::Taken);
    // The sender retries (its first answer was lost): taken again, not sent again.
    assert_eq!(f.service.serve_handover(&h).await, HandedOver::Taken);
    assert_eq!(status(&f, "cmd-1").await, CommandState::Dispatched);
    match f.frames.try_recv() {
        Ok(frame) => match *frame {
            HubFrame::Command(c) => assert_eq!(c.command_id, "cmd-1"),
            other => panic!("{other:?}"),
        },
        Err(e) => panic!("no frame: {e}"),
    }
    assert!(f.frames.try_recv().is_err(), "dispatched exactly once");
}

#[tokio::test]
async fn nothing_past_its_deadline_or_no_longer_pending_is_dispatched() {
    let mut f = fixture();
    pending(&f, "late").await;
    let past = handover("late", "edge-01", clock::unix_ms() - 1);
    match f.service.serve_handover(&past).await {
        HandedOver::Failed { code, .. } => assert_eq!(code, "queue_ttl_expired"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        status(&f, "late").await,
        CommandState::Pending,
        "left to its holder"
    );

    let mut cancelled = command("gone", "edge-01", CommandState::Cancelled);
    cancelled.created_at = clock::now_rfc3339();
    f.service
        .store()
        .insert_command(&cancelled)
        .await
        .expect("insert");
    let h = handover("gone", "edge-01", later());
    assert_eq!(f.service.serve_handover(&h).await, HandedOver::Taken);
    assert_eq!(status(&f, "gone").await, CommandState::Cancelled);

    // Not connected here; and a handover that names another agent than its record.
    pending(&f, "other").await;
    let h = handover("other", "db-01", later());
    assert_eq!(f.service.serve_handover(&h).await, HandedOver::NotHere);
    let mut foreign = command("foreign", "db-01", CommandState::Pending);
    foreign.created_at = clock::now_rfc3339();
    f.service
        .store()
        .insert_command(&foreign)
        .await
        .expect("insert");
    let h = handover("foreign", "edge-01", later());
    match f.service.serve_handover(&h).await {
        HandedOver::Failed { code, .. } => assert_eq!(code, "bad_request"),
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&f, "foreign").await, CommandState::Pending);
    assert!(f.frames.try_recv().is_err(), "nothing was sent");
}
