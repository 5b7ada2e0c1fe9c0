//! The conformance suite every [`EnrolmentStore`] implementation must pass, plus type tests.

use super::*;
#[cfg(test)]
use crate::store::MemoryStore;

/// An unused token for `agent` issued at the start of 2025.
pub fn token(hash: &str, agent: &str, expires_at: &str) -> JoinToken {
    JoinToken {
        token_sha256: hash.to_owned(),
        agent_id: agent.to_owned(),
        created_by: "admin".to_owned(),
        created_at: "2025-01-01T00:00:00Z".to_owned(),
        expires_at: expires_at.to_owned(),
        used_at: None,
    }
}

fn states(store: &dyn EnrolmentStore, agent: &str) -> Vec<(String, PinState)> {
    store
        .pins(agent)
        .expect("pins")
        .into_iter()
        .map(|p| (p.pin, p.state))
        .collect()
}

fn pin(name: &str, state: PinState) -> (String, PinState) {
    (name.to_owned(), state)
}

fn is_conflict(r: Result<(), StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

/// Runs every behaviour the trait documents against a fresh, empty `store`.
pub fn conformance(store: &dyn EnrolmentStore) {
    pins_and_revocation(store);
    join_tokens(store);
    pruning(store);
    revocation_voids_tokens_and_tokens_never_lift_it(store);
    renewals(store);
}

fn revocation_voids_tokens_and_tokens_never_lift_it(store: &dyn EnrolmentStore) {
    let late = "2030-01-01T00:00:00Z";
    let now = "2026-01-01T00:00:00Z";
    for hash in ["r1", "r2"] {
        store
            .insert_join_token(&token(hash, "edge-09", late))
            .expect("insert");
    }
    // A token whose pin is revoked is a conflict and stays unspent.
    store
        .upsert_pin(
            "edge-09",
            "stolen",
            PinState::Revoked,
            PinRecord::SOURCE_API,
        )
        .expect("revoked pin");
    assert!(matches!(
        store.redeem_join_token_for_pin("r1", "edge-09", now, "stolen"),
        Err(StoreError::Conflict(_))
    ));
    let Redeem::Ok(t) = store
        .redeem_join_token_for_pin("r1", "edge-09", now, "fresh")
        .expect("redeem")
    else {
        panic!("r1 is redeemable");
    };
    assert_eq!(t.used_at.as_deref(), Some(now));
    assert_eq!(
        states(store, "edge-09"),
        [
            pin("stolen", PinState::Revoked),
            pin("fresh", PinState::Active)
        ]
    );
    // Revoking voids the unused r2; a later redemption is refused and lifts nothing.
    store.revoke_agent("edge-09").expect("revoke");
    assert_eq!(
        store
            .redeem_join_token_for_pin("r2", "edge-09", now, "again")
            .expect("redeem"),
        Redeem::Unknown
    );
    store
        .insert_join_token(&token("r3", "edge-09", late))
        .expect("r3 issued after");
    assert_eq!(
        store
            .redeem_join_token_for_pin("r3", "edge-09", now, "again")
            .expect("redeem"),
        Redeem::AgentRevoked
    );
    assert!(store
        .revoked_agents()
        .expect("revoked")
        .contains(&"edge-09".to_owned()));
    assert!(
        matches!(
            store.redeem_join_token("r3", "edge-09", now).expect("r3"),
            Redeem::Ok(_)
        ),
        "the refusal left r3 unspent"
    );
}

fn renewals(store: &dyn EnrolmentStore) {
    use PinState::{Active, Retired};
    let rec = |old: &str, new: &str, at: i64| RenewalRecord {
        agent_id: "edge-20".to_owned(),
        old_pin: old.to_owned(),
        new_pin: new.to_owned(),
        requested_at_ms: at,
        completed: false,
    };
    let interval = 600_000;
    store
        .upsert_pin("edge-20", "a", Active, PinRecord::SOURCE_CONFIG)
        .expect("a");
    assert_eq!(store.renewal("edge-20").expect("none"), None);
    assert_eq!(
        store
            .start_renewal(&rec("a", "b", 1_000), interval)
            .expect("b"),
        RenewalStart::Started { superseded: None }
    );
    // One outstanding: refused within the interval, pins unchanged.
    assert_eq!(
        store
            .start_renewal(&rec("a", "c", 2_000), interval)
            .expect("c"),
        RenewalStart::Outstanding { wait_ms: 599_000 }
    );
    assert_eq!(
        states(store, "edge-20"),
        [pin("a", Active), pin("b", Active)]
    );
    // After the interval the never-used b is retired for c.
    assert_eq!(
        store
            .start_renewal(&rec("a", "c", 601_000), interval)
            .expect("c"),
        RenewalStart::Started {
            superseded: Some("b".to_owned())
        }
    );
    assert_eq!(
        states(store, "edge-20"),
        [pin("a", Active), pin("b", Retired), pin("c", Active)]
    );
    // Seen in use: a session with c retires a, exactly once.
    assert_eq!(store.complete_renewal("edge-20", "a").expect("old"), None);
    assert_eq!(
        store.complete_renewal("edge-20", "c").expect("c"),
        Some("a".to_owned())
    );
    assert_eq!(store.complete_renewal("edge-20", "c").expect("again"), None);
    assert_eq!(
        states(store, "edge-20"),
        [pin("a", Retired), pin("b", Retired), pin("c", Active)]
    );
    assert!(
        store
            .renewal("edge-20")
            .expect("row")
            .expect("some")
            .completed
    );
    assert_eq!(
        store
            .start_renewal(&rec("c", "d", 602_000), interval)
            .expect("d"),
        RenewalStart::TooSoon { wait_ms: 599_000 }
    );
}

fn pins_and_revocation(store: &dyn EnrolmentStore) {
    use PinState::{Active, Retired, Revoked};
    assert!(store.all_pins().expect("all").is_empty());
    assert!(store.pins("edge-01").expect("pins").is_empty());
    assert!(store.revoked_agents().expect("revoked").is_empty());

    store
        .upsert_pin("edge-01", "p1", Active, PinRecord::SOURCE_CONFIG)
        .expect("p1");
    store
        .upsert_pin("edge-01", "p2", Active, PinRecord::SOURCE_API)
        .expect("p2");
    store
        .upsert_pin("edge-02", "p3", Active, PinRecord::SOURCE_JOIN_TOKEN)
        .expect("p3");
    let p1 = &store.pins("edge-01").expect("pins")[0];
    assert_eq!(
        (
            p1.agent_id.as_str(),
            p1.pin.as_str(),
            p1.state,
            p1.source.as_str()
        ),
        ("edge-01", "p1", Active, "config")
    );
    assert_eq!(p1.created_at, p1.changed_at);
    parse_time("created_at", &p1.created_at).expect("RFC 3339");
    assert_eq!(
        states(store, "edge-01"),
        [pin("p1", Active), pin("p2", Active)]
    );

    // Same state again: nothing changes, not even the source.
    let before = store.pins("edge-01").expect("pins");
    store
        .upsert_pin("edge-01", "p1", Active, PinRecord::SOURCE_RENEWAL)
        .expect("same state");
    assert_eq!(store.pins("edge-01").expect("pins"), before);

    // Active ⇄ retired both ways; the source stays the original one.
    store
        .upsert_pin("edge-01", "p1", Retired, PinRecord::SOURCE_RENEWAL)
        .expect("retire");
    assert_eq!(
        states(store, "edge-01"),
        [pin("p1", Retired), pin("p2", Active)]
    );
    assert_eq!(store.pins("edge-01").expect("pins")[0].source, "config");
    store
        .upsert_pin("edge-01", "p1", Active, PinRecord::SOURCE_API)
        .expect("reactivate retired");

    // Revoked is final.
    store
        .upsert_pin("edge-01", "p1", Revoked, PinRecord::SOURCE_API)
        .expect("revoke pin");
    assert!(is_conflict(store.upsert_pin(
        "edge-01",
        "p1",
        Active,
        PinRecord::SOURCE_API
    )));
    assert!(is_conflict(store.upsert_pin(
        "edge-01",
        "p1",
        Retired,
        PinRecord::SOURCE_RENEWAL
    )));
    store
        .upsert_pin("edge-01", "p1", Revoked, PinRecord::SOURCE_API)
        .expect("revoked again is fine");
    assert_eq!(
        states(store, "edge-01"),
        [pin("p1", Revoked), pin("p2", Active)]
    );

    // Revoking an agent counts the pins that changed and marks the agent.
    assert_eq!(store.revoke_agent("edge-01").expect("revoke"), 1);
    assert_eq!(
        states(store, "edge-01"),
        [pin("p1", Revoked), pin("p2", Revoked)]
    );
    assert_eq!(store.revoke_agent("edge-01").expect("again"), 0);
    assert_eq!(store.revoke_agent("ghost").expect("no pins"), 0);
    assert_eq!(
        store.revoked_agents().expect("revoked"),
        ["edge-01", "ghost"]
    );
    assert_eq!(states(store, "edge-02"), [pin("p3", Active)]);

    // Unrevoking clears the agent flag only; a fresh pin may then be enrolled.
    store.unrevoke_agent("edge-01").expect("unrevoke");
    store
        .unrevoke_agent("never-revoked")
        .expect("unrevoke unknown");
    assert_eq!(store.revoked_agents().expect("revoked"), ["ghost"]);
    assert!(is_conflict(store.upsert_pin(
        "edge-01",
        "p2",
        Active,
        PinRecord::SOURCE_API
    )));
    store
        .upsert_pin("edge-01", "p4", Active, PinRecord::SOURCE_API)
        .expect("fresh pin");

    let all: Vec<(String, String)> = store
        .all_pins()
        .expect("all")
        .into_iter()
        .map(|p| (p.agent_id, p.pin))
        .collect();
    let expected = [
        ("edge-01", "p1"),
        ("edge-01", "p2"),
        ("edge-02", "p3"),
        ("edge-01", "p4"),
    ];
    assert_eq!(
        all,
        expected.map(|(a, p)| (a.to_owned(), p.to_owned())),
        "enrolment order"
    );
}

fn join_tokens(store: &dyn EnrolmentStore) {
    let hour = "2025-01-01T01:00:00Z";
    store
        .insert_join_token(&token("t1", "edge-01", hour))
        .expect("t1");
    assert!(matches!(
        store.insert_join_token(&token("t1", "edge-01", hour)),
        Err(StoreError::Duplicate(h)) if h == "t1"
    ));
    assert!(matches!(
        store.insert_join_token(&token("bad", "edge-01", "tomorrow")),
        Err(StoreError::Corrupt(_))
    ));

    let redeem = |hash: &str, agent: &str, now: &str| {
        store.redeem_join_token(hash, agent, now).expect("redeem")
    };
    let half = "2025-01-01T00:30:00Z";
    assert_eq!(redeem("bad", "edge-01", half), Redeem::Unknown);
    assert_eq!(redeem("nope", "edge-01", half), Redeem::Unknown);

    // A wrong agent does not consume the token; the right one does, exactly once.
    assert_eq!(redeem("t1", "edge-02", half), Redeem::WrongAgent);
    let mut used = token("t1", "edge-01", hour);
    used.used_at = Some(half.to_owned());
    assert_eq!(redeem("t1", "edge-01", half), Redeem::Ok(used));
    assert_eq!(redeem("t1", "edge-01", half), Redeem::AlreadyUsed);
    assert_eq!(redeem("t1", "edge-02", hour), Redeem::AlreadyUsed);

    // Expiry is inclusive, compares instants (not strings) and does not consume either.
    store
        .insert_join_token(&token("t2", "edge-01", hour))
        .expect("t2");
    assert_eq!(redeem("t2", "edge-01", hour), Redeem::Expired);
    assert_eq!(
        redeem("t2", "edge-01", "2025-01-01T02:00:00+01:00"),
        Redeem::Expired
    );
    assert_eq!(
        redeem("t2", "edge-02", "2025-01-02T00:00:00Z"),
        Redeem::Expired
    );
    // 23:30 on Dec 31 in UTC, though the string sorts after the expiry.
    let early = "2025-01-01T01:30:00+02:00";
    let Redeem::Ok(t) = redeem("t2", "edge-01", early) else {
        panic!("t2 is not expired at {early}");
    };
    assert_eq!(t.used_at.as_deref(), Some(early));

    assert!(matches!(
        store.redeem_join_token("t2", "edge-01", "now"),
        Err(StoreError::Corrupt(_))
    ));
}

fn pruning(store: &dyn EnrolmentStore) {
    // Left by `join_tokens`: t1 and t2, used and expired at 01:00 on Jan 1.
    let day = |d: u32| format!("2025-01-{d:02}T00:00:00Z");
    for (hash, expires) in [("live", day(10)), ("stale", day(2)), ("used", day(28))] {
        store
            .insert_join_token(&token(hash, "edge-01", &expires))
            .expect("insert");
    }
    assert!(matches!(
        store
            .redeem_join_token("used", "edge-01", &day(3))
            .expect("redeem"),
        Redeem::Ok(_)
    ));
    assert_eq!(store.prune_join_tokens(&day(1)).expect("nothing yet"), 0);
    // Jan 5: t1, t2 and stale are expired; used was used 2 days ago.
    assert_eq!(store.prune_join_tokens(&day(5)).expect("prune"), 3);
    assert_eq!(
        store
            .redeem_join_token("used", "edge-01", &day(5))
            .expect("kept"),
        Redeem::AlreadyUsed
    );
    assert_eq!(
        store
            .redeem_join_token("stale", "edge-01", &day(5))
            .expect("gone"),
        Redeem::Unknown
    );
    // Exactly seven days after use it is still kept; later it goes, long before its expiry.
    assert_eq!(store.prune_join_tokens(&day(10)).expect("live expires"), 1);
    assert_eq!(store.prune_join_tokens(&day(10)).expect("at 7 days"), 0);
    assert_eq!(
        store
            .prune_join_tokens("2025-01-10T00:00:01Z")
            .expect("past 7 days"),
        1
    );
    assert!(store.prune_join_tokens("soon").is_err());
}

#[test]
fn pin_states_round_trip() {
    for state in PinState::ALL {
        assert_eq!(state.as_str().parse::<PinState>(), Ok(state));
        let json = serde_json::to_string(&state).expect("serialize");
        assert_eq!(json, format!("\"{state}\""));
    }
    assert_eq!(
        "Active".parse::<PinState>(),
        Err(UnknownPinState("Active".to_owned()))
    );
}

#[tokio::test]
async fn async_wrapper_covers_enrolment() {
    let store = Store::new(MemoryStore::new());
    store
        .upsert_pin("edge-01", "p1", PinState::Active, PinRecord::SOURCE_API)
        .await
        .expect("upsert");
    assert_eq!(store.pins("edge-01").await.expect("pins").len(), 1);
    assert_eq!(store.all_pins().await.expect("all").len(), 1);
    store
        .insert_join_token(&token("t", "edge-01", "2025-01-01T01:00:00Z"))
        .await
        .expect("token");
    let now = "2025-01-01T00:00:01Z";
    assert!(matches!(
        store.redeem_join_token("t", "edge-01", now).await,
        Ok(Redeem::Ok(_))
    ));
    assert_eq!(store.revoke_agent("edge-01").await.expect("revoke"), 1);
    assert_eq!(store.revoked_agents().await.expect("list"), ["edge-01"]);
    store.unrevoke_agent("edge-01").await.expect("unrevoke");
    assert!(store.revoked_agents().await.expect("list").is_empty());
    assert_eq!(
        store
            .prune_join_tokens("2025-01-02T00:00:00Z")
            .await
            .expect("prune"),
        1
    );
}
