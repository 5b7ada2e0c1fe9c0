use super::*;
use crate::store::{CommandState, JobRecord};

fn ping(bus: &EventBus, n: u64) {
    for i in 0..n {
        bus.publish(
            "agent_disconnected",
            Family::Agent,
            (Some("a"), None, none()),
            json!({"i": i}),
        );
    }
}

fn ids(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

#[test]
fn ids_increase_and_live_events_reach_subscribers() {
    let bus = EventBus::starting_at(1);
    let mut sub = bus.subscribe(None).expect("subscribe");
    assert!(sub.reset.is_none() && sub.replay.is_empty());
    ping(&bus, 3);
    let got: Vec<u64> = (0..3)
        .map(|_| sub.rx.try_recv().expect("event").id)
        .collect();
    assert_eq!(got, vec![1, 2, 3]);
    let e = bus.subscribe(Some(2)).expect("subscribe").replay.clone();
    assert_eq!(
        e[0].to_sse(),
        "id: 3\nevent: agent_disconnected\ndata: {\"i\":2}\n\n"
    );
}

#[test]
fn resume_replays_after_the_last_id_without_gap_or_duplicate() {
    let bus = EventBus::starting_at(100);
    ping(&bus, 5); // 100..=104
    let mut sub = bus.subscribe(Some(101)).expect("subscribe");
    assert!(sub.reset.is_none());
    assert_eq!(ids(&sub.replay), vec![102, 103, 104]);
    ping(&bus, 1);
    assert_eq!(sub.rx.try_recv().expect("live").id, 105);
    // Up to date: nothing replayed, no reset.
    let s = bus.subscribe(Some(105)).expect("subscribe");
    assert!(s.reset.is_none() && s.replay.is_empty());
}

#[test]
fn an_id_older_than_the_ring_or_unknown_gets_reset() {
    let bus = EventBus::starting_at(1);
    ping(&bus, RING_CAPACITY as u64 + 10); // 1..=1034; the ring holds 11..=1034
    let s = bus.subscribe(Some(5)).expect("subscribe");
    assert_eq!(s.reset, Some("events_lost"));
    assert_eq!(s.reset_id, 10);
    assert_eq!(s.replay.len(), RING_CAPACITY);
    assert_eq!(s.replay[0].id, 11);
    // The id right before the ring is still complete.
    let s = bus.subscribe(Some(10)).expect("subscribe");
    assert!(s.reset.is_none());
    assert_eq!(s.replay.len(), RING_CAPACITY);
    // An id this process never issued (an earlier process, another backend).
    let s = bus.subscribe(Some(5000)).expect("subscribe");
    assert_eq!(s.reset, Some("unknown_event_id"));
    assert!(s.replay.is_empty());
}

#[test]
fn a_full_subscriber_is_dropped_and_publish_never_blocks() {
    let bus = EventBus::starting_at(1);
    let stalled = bus.subscribe(None).expect("subscribe");
    let mut reading = bus.subscribe(None).expect("subscribe");
    for i in 0..(SUBSCRIBER_QUEUE as u64 * 4) {
        ping(&bus, 1);
        assert_eq!(
            reading.rx.try_recv().expect("live reader keeps up").id,
            i + 1
        );
    }
    assert!(stalled.dropped.load(Ordering::Relaxed));
    assert!(!reading.dropped.load(Ordering::Relaxed));
    assert_eq!(bus.dropped(), 1);
    assert_eq!(bus.subscribers(), 1);
    assert_eq!(bus.published(), SUBSCRIBER_QUEUE as u64 * 4);
    drop(stalled);
    drop(reading);
    assert_eq!(bus.subscribers(), 0);
}

#[test]
fn subscribers_are_bounded_and_close_ends_them() {
    let bus = EventBus::starting_at(1);
    let subs: Vec<_> = (0..MAX_SUBSCRIBERS)
        .map(|_| bus.subscribe(None).expect("under the bound"))
        .collect();
    assert_eq!(bus.subscribe(None).err(), Some(SubscribeError::Busy));
    bus.close();
    assert!(subs.iter().all(|s| s.dropped.load(Ordering::Relaxed)));
    assert_eq!(bus.subscribe(None).err(), Some(SubscribeError::Closed));
}

fn record(agent: &str, status: CommandState, job: Option<&str>) -> CommandRecord {
    CommandRecord {
        command_id: format!("c-{agent}"),
        agent_id: agent.to_owned(),
        verb: "ping".to_owned(),
        args: json!({}),
        requested_by: "t".to_owned(),
        status,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        created_at: String::new(),
        started_at: None,
        finished_at: None,
        duration_ms: None,
        error: None,
        timeout_ms: 1000,
        job_id: job.map(str::to_owned),
    }
}

#[test]
fn job_progress_counts_each_target_once_and_finishes() {
    let bus = EventBus::starting_at(1);
    let mut sub = bus.subscribe(None).expect("subscribe");
    let job = JobRecord {
        job_id: "j1".to_owned(),
        verb: "ping".to_owned(),
        args: json!({}),
        requested_by: "t".to_owned(),
        selector: json!({}),
        max_concurrency: 2,
        max_errors: 1,
        created_at: String::new(),
        targets: vec!["a".to_owned(), "b".to_owned()],
    };
    bus.job_started(&job);
    bus.command_status(&record("a", CommandState::Dispatched, Some("j1")));
    bus.command_status(&record("a", CommandState::Ok, Some("j1")));
    bus.command_status(&record("a", CommandState::Ok, Some("j1"))); // a re-delivery
    bus.command_status(&record("b", CommandState::Failed, Some("j1")));
    let mut progress = Vec::new();
    while let Ok(e) = sub.rx.try_recv() {
        if e.kind == "job_progress" {
            let v: Value = serde_json::from_str(&e.data).expect("json");
            progress.push((v["summary"].clone(), v["finished"].clone()));
            assert_eq!(&e.targets[..], &job.targets[..]);
        }
    }
    assert_eq!(progress.len(), 3, "{progress:?}");
    assert_eq!(progress[0].0["pending"], 2);
    assert_eq!(progress[1].0["ok"], 1);
    assert_eq!(progress[2].0["failed"], 1);
    assert_eq!(progress[2].0["pending"], 0);
    assert_eq!(progress[2].1, true);
    assert_eq!(progress[1].1, false);
}
