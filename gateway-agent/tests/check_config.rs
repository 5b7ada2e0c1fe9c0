//! `check_config`: the host-side checks behind `gateway-agent check-config`.
#![allow(clippy::unwrap_used)]

mod support;

use gateway_agent::check_config;
use mesh_certs::Validity;
use support::Pki;

fn ready(pki: &Pki) {
    std::fs::create_dir_all(pki.path().join("state")).unwrap();
}

#[test]
fn a_complete_setup_passes() {
    let pki = Pki::new("edge-01");
    ready(&pki);
    let mut config = pki.config(8081, &[&pki.server.pin], "");
    config.verbs[0].program = "/bin/sh".into();
    check_config(&config).unwrap();
}

#[test]
fn problems_are_listed_with_their_keys() {
    let pki = Pki::new("edge-01");
    // A certificate for another agent id, and a program that cannot run.
    pki.ca
        .issue_agent("edge-99", Validity::days(1))
        .unwrap()
        .save(&pki.agent_dir)
        .unwrap();
    let not_executable = pki.path().join("script");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    let mut config = pki.config(8081, &[&pki.server.pin], "");
    config.verbs[0].program = not_executable;
    config.verbs[0].run_as = Some("agentmesh-no-such-user".into());
    let problems = check_config(&config).unwrap_err();
    let all = problems.join("\n");
    assert!(
        all.contains("verbs[0].run_as") && all.contains("agentmesh-no-such-user"),
        "{all}"
    );
    assert!(
        all.contains("verbs[0].program") && all.contains("not executable"),
        "{all}"
    );
    assert!(
        all.contains("outbound.cert") && all.contains("edge-99"),
        "{all}"
    );
    assert!(all.contains("agent.state_dir"), "{all}");
    assert!(
        problems.iter().all(|p| p.contains("gateway.toml: ")),
        "{all}"
    );
}

#[test]
fn missing_tls_files_are_reported_once_each() {
    let pki = Pki::new("edge-01");
    ready(&pki);
    std::fs::remove_file(pki.agent_dir.join("key.pem")).unwrap();
    let mut config = pki.config(8081, &[&pki.server.pin], "");
    config.verbs[0].program = "/bin/sh".into();
    let problems = check_config(&config).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("outbound.key"), "{problems:?}");
}
