use super::*;

fn token(role: Role, verbs: &[&str], labels: &[(&str, &str)]) -> Principal {
    Principal {
        name: "t".into(),
        role,
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn on<'a>(verb: &'a str, l: &'a BTreeMap<String, String>) -> Subject<'a> {
    Subject {
        verb: Some(verb),
        agent: AgentScope::Labels(l),
    }
}

#[test]
fn a_scoped_operator_may_act_only_inside_its_scope() {
    let eu_ping = token(Role::Operator, &["ping"], &[("region", "eu")]);
    let eu = labels(&[("region", "eu"), ("role", "web")]);
    let us = labels(&[("region", "us")]);
    for action in [Action::Submit, Action::FanOut, Action::Cancel, Action::Read] {
        assert_eq!(decide(&eu_ping, action, &on("ping", &eu)), Decision::Allow);
    }
    // Submit and fan-out outside the scope: 403; cancel and read: hidden (404).
    for action in [Action::Submit, Action::FanOut] {
        assert!(matches!(
            decide(&eu_ping, action, &on("ping", &us)),
            Decision::Forbidden(_)
        ));
        assert!(matches!(
            decide(&eu_ping, action, &on("reboot", &eu)),
            Decision::Forbidden(_)
        ));
    }
    for action in [Action::Cancel, Action::Read] {
        assert_eq!(decide(&eu_ping, action, &on("ping", &us)), Decision::Hidden);
        assert_eq!(
            decide(&eu_ping, action, &on("reboot", &eu)),
            Decision::Hidden
        );
    }
}

#[test]
fn a_viewer_reads_in_scope_but_never_runs_or_cancels() {
    let viewer = token(Role::Viewer, &["*"], &[("region", "eu")]);
    let eu = labels(&[("region", "eu")]);
    let us = labels(&[("region", "us")]);
    assert_eq!(
        decide(&viewer, Action::Read, &on("x", &eu)),
        Decision::Allow
    );
    assert_eq!(
        decide(&viewer, Action::Read, &on("x", &us)),
        Decision::Hidden
    );
    assert!(matches!(
        decide(&viewer, Action::Cancel, &on("x", &eu)),
        Decision::Forbidden(_)
    ));
    // Out of scope stays hidden even for a role that could not cancel anyway.
    assert_eq!(
        decide(&viewer, Action::Cancel, &on("x", &us)),
        Decision::Hidden
    );
    assert!(matches!(
        decide(&viewer, Action::Submit, &on("x", &eu)),
        Decision::Forbidden(_)
    ));
}

#[test]
fn admins_are_unscoped() {
    let admin = token(Role::Admin, &["ping"], &[("region", "eu")]);
    let us = labels(&[("region", "us")]);
    for action in [Action::Submit, Action::FanOut, Action::Cancel, Action::Read] {
        assert_eq!(decide(&admin, action, &on("reboot", &us)), Decision::Allow);
    }
}

#[test]
fn records_without_an_agent_are_for_unscoped_tokens_only() {
    let none = Subject {
        verb: None,
        agent: AgentScope::None,
    };
    let unknown = Subject {
        verb: Some("ping"),
        agent: AgentScope::Unknown,
    };
    let all = token(Role::Viewer, &["*"], &[]);
    let verbs_only = token(Role::Viewer, &["ping"], &[]);
    let labelled = token(Role::Viewer, &["*"], &[("region", "eu")]);
    assert_eq!(decide(&all, Action::Read, &none), Decision::Allow);
    assert_eq!(decide(&verbs_only, Action::Read, &none), Decision::Hidden);
    assert_eq!(decide(&labelled, Action::Read, &none), Decision::Hidden);
    // An agent the registry no longer knows: only without a label scope.
    assert_eq!(decide(&verbs_only, Action::Read, &unknown), Decision::Allow);
    assert_eq!(decide(&labelled, Action::Read, &unknown), Decision::Hidden);
}
