use super::*;

fn hello(id: &str, labels: &[(&str, &str)]) -> HelloFrame {
    serde_json::from_value(serde_json::json!({
        "protocol": 1,
        "agent_id": id,
        "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        "verbs": [{"name": "ping"}],
    }))
    .expect("hello")
}

fn session() -> LiveSession {
    let (tx, _rx) = mpsc::channel(1);
    let (close, _) = watch::channel(None);
    LiveSession {
        session_id: "s".into(),
        tx,
        close: Arc::new(close),
        shared: Arc::default(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn enrolment_labels_win_over_hello_claims() {
    let r = Registry::default();
    r.enrol("a", "pin-a");
    r.set_enrolled_labels("a", labels(&[("region", "us")]));
    let _ = r.attach(
        hello("a", &[("region", "eu"), ("rack", "7")]),
        "pin-a",
        "127.0.0.1:1",
        session(),
    );
    let t = r.command_target("a", "ping").expect("known");
    assert_eq!(t.labels, labels(&[("region", "us")]));
    assert!(r.ids_matching(&labels(&[("region", "eu")])).is_empty());
    assert_eq!(r.ids_matching(&labels(&[("region", "us")])), ["a"]);
    // A hello-only key adds information for display but is not matched.
    assert!(r.ids_matching(&labels(&[("rack", "7")])).is_empty());
    let view = r.get("a").expect("view");
    assert_eq!(view.labels, labels(&[("region", "us"), ("rack", "7")]));
    assert_eq!(view.authoritative_labels, Some(labels(&[("region", "us")])));
}

#[test]
fn without_enrolment_labels_hello_labels_are_used() {
    let r = Registry::default();
    r.enrol("b", "pin-b");
    let _ = r.attach(hello("b", &[("region", "eu")]), "pin-b", "x", session());
    assert_eq!(r.ids_matching(&labels(&[("region", "eu")])), ["b"]);
}

#[test]
fn revoked_and_retired_identities_are_never_targeted() {
    let r = Registry::default();
    r.enrol("a", "pin-a");
    let _ = r.attach(hello("a", &[]), "pin-a", "x", session());
    assert!(r.command_target("a", "ping").expect("a").session.is_some());
    r.retire_pin("a", "pin-a");
    r.enrol("a", "pin-new");
    let t = r.command_target("a", "ping").expect("a");
    assert!(t.session.is_none(), "the session's pin was retired");
    assert!(
        !t.refused,
        "the agent itself may still connect with its new pin"
    );

    r.enrol("b", "pin-b");
    let _ = r.attach(hello("b", &[]), "pin-b", "x", session());
    r.revoke_agent("b");
    let t = r.command_target("b", "ping").expect("b");
    assert!(t.refused && t.session.is_none());
    assert_eq!(r.ids_matching(&BTreeMap::new()), ["a"]);
}

#[test]
fn a_hello_announced_by_another_replica_is_matched_but_never_over_a_local_session() {
    let r = Registry::default();
    // Unknown agents are not added.
    assert!(!r.set_remote_hello(hello("ghost", &[("region", "eu")]), false, None));
    assert!(!r.contains("ghost"));

    r.enrol("c", "pin-c");
    assert!(r.set_remote_hello(hello("c", &[("region", "eu")]), false, Some("s-remote")));
    assert_eq!(r.ids_matching(&labels(&[("region", "eu")])), ["c"]);
    let t = r.command_target("c", "ping").expect("known");
    assert!(t.session.is_none() && t.ever_connected && t.spec.is_some());

    // A local session wins over a later gather, not over a newer announcement.
    let _ = r.attach(hello("c", &[("region", "us")]), "pin-c", "x", session());
    assert!(!r.set_remote_hello(hello("c", &[("region", "eu")]), false, None));
    assert_eq!(r.ids_matching(&labels(&[("region", "us")])), ["c"]);
    assert!(r.set_remote_hello(hello("c", &[("region", "eu")]), true, Some("s-new")));
    assert_eq!(r.ids_matching(&labels(&[("region", "eu")])), ["c"]);
}

#[test]
fn a_remote_session_ends_only_when_the_announced_one_does() {
    let r = Registry::default();
    let Ok(mut events) = r.events.subscribe(None) else {
        panic!("subscribe")
    };
    r.enrol("d", "pin-d");
    r.set_remote_hello(hello("d", &[]), false, Some("s1"));
    r.set_remote_hello(hello("d", &[]), false, Some("s2"));
    r.remote_detached("d", "s1"); // older session: the agent is still connected elsewhere
    r.remote_detached("d", "s2");
    r.remote_detached("d", "s2"); // said once
                                  // Learned from a gather (no event then), its end is still reported.
    r.note_remote_session("d", "s3");
    r.remote_detached("d", "s3");
    let kinds: Vec<&str> = std::iter::from_fn(|| events.rx.try_recv().ok())
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "agent_connected",
            "agent_connected",
            "agent_disconnected",
            "agent_disconnected"
        ]
    );
}

fn stored(active: &[&str], retired: &[&str], revoked: &[&str], agent: bool) -> StoredIdentity {
    let own = |pins: &[&str]| pins.iter().map(|p| p.to_string()).collect();
    StoredIdentity {
        active: own(active),
        retired: own(retired),
        revoked: own(revoked),
        agent_revoked: agent,
    }
}

#[test]
fn replaced_identity_admits_pins_enrolled_elsewhere_and_refuses_retired_ones() {
    let r = Registry::default();
    // Unknown here, nothing stored: stays unknown.
    assert!(r
        .replace_identity("ghost", StoredIdentity::default())
        .is_none());
    assert!(!r.contains("ghost"));
    // Enrolled by a join token on another replica.
    assert!(r
        .replace_identity("a", stored(&["p1"], &[], &[], false))
        .is_none());
    assert_eq!(r.check_identity("a", "p1"), Ok(()));
    let _ = r.attach(hello("a", &[]), "p1", "x", session());
    // Renewed there: p2 active, p1 retired. The live p1 session is not closed (as on a
    // single node) but nothing more is sent on it.
    assert!(r
        .replace_identity("a", stored(&["p2"], &["p1"], &[], false))
        .is_none());
    assert_eq!(r.check_identity("a", "p1"), Err(IdentityRejection::Retired));
    assert_eq!(r.check_identity("a", "p2"), Ok(()));
    assert_eq!(r.active_pins("a"), ["p2"]);
    let t = r.command_target("a", "ping").expect("a");
    assert!(t.session.is_none() && !t.refused);
    assert!(r.session("a").is_some());
}

#[test]
fn replaced_identity_closes_a_session_whose_pin_is_now_revoked() {
    let r = Registry::default();
    r.enrol("a", "p1");
    r.mark_revoked("a");
    // An admin enrolled a fresh pin elsewhere, lifting the revocation.
    assert!(r
        .replace_identity("a", stored(&["p2"], &[], &["p1"], false))
        .is_none());
    assert_eq!(r.check_identity("a", "p2"), Ok(()));
    assert_eq!(r.check_identity("a", "p1"), Err(IdentityRejection::Revoked));
    let _ = r.attach(hello("a", &[]), "p2", "x", session());
    assert_eq!(r.connected_count(), 1);
    // Revoked elsewhere: the session is handed back to be closed and no longer listed.
    let closed = r.replace_identity("a", stored(&[], &[], &["p1", "p2"], true));
    assert!(closed.is_some());
    assert_eq!(r.connected_count(), 0);
    assert!(!r.get("a").expect("a").connected);
    assert_eq!(r.check_identity("a", "p2"), Err(IdentityRejection::Revoked));
    assert!(r.command_target("a", "ping").expect("a").refused);
}

#[test]
fn stored_labels_from_elsewhere_never_override_this_replicas_config() {
    let r = Registry::default();
    r.set_config_labels("cfg", labels(&[("region", "us")]));
    r.apply_stored_labels("cfg", labels(&[("region", "eu")]));
    assert_eq!(r.scope_labels("cfg"), Some(labels(&[("region", "us")])));
    r.apply_stored_labels("api", labels(&[("region", "eu")]));
    assert_eq!(
        r.ids_matching(&labels(&[("region", "eu")])),
        Vec::<String>::new()
    );
    r.enrol("api", "pin");
    assert_eq!(r.ids_matching(&labels(&[("region", "eu")])), ["api"]);
    // Its labels left the config: stored labels apply again.
    r.clear_enrolled_labels("cfg");
    r.apply_stored_labels("cfg", labels(&[("region", "eu")]));
    assert_eq!(r.scope_labels("cfg"), Some(labels(&[("region", "eu")])));
}

#[test]
fn stored_identity_sorts_pins_by_state() {
    use crate::store::{PinRecord, PinState};
    let rec = |pin: &str, state| PinRecord {
        agent_id: "a".into(),
        pin: pin.into(),
        state,
        source: PinRecord::SOURCE_API.into(),
        created_at: String::new(),
        changed_at: String::new(),
    };
    let pins = [
        rec("p1", PinState::Retired),
        rec("p2", PinState::Active),
        rec("p3", PinState::Revoked),
    ];
    assert_eq!(
        StoredIdentity::from_pins(&pins, true),
        stored(&["p2"], &["p1"], &["p3"], true)
    );
}
