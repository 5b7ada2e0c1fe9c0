#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn renders_every_family_in_prometheus_text() {
    let m = Metrics::default();
    m.hub_rejected("ip_rate_limited");
    m.session_closed("heartbeat_timeout");
    m.command_finished("ping", "ok", Some(Duration::from_millis(30)));
    m.rate_limited("operator");
    let out = m.render_with(&Scrape {
        connected: 3,
        audit_writable: true,
        ..Scrape::default()
    });
    for needle in [
        "# TYPE agentmesh_agents_connected gauge\nagentmesh_agents_connected 3",
        "agentmesh_hub_rejected_total{reason=\"ip_rate_limited\"} 1",
        "agentmesh_sessions_closed_total{reason=\"heartbeat_timeout\"} 1",
        "agentmesh_commands_total{verb=\"ping\",status=\"ok\"} 1",
        "agentmesh_command_duration_seconds_bucket{le=\"0.05\"} 1",
        "agentmesh_rate_limited_total{limiter=\"operator\"} 1",
        "agentmesh_build_info{version=",
        "# TYPE agentmesh_audit_fsync_duration_seconds histogram",
        "agentmesh_queue_depth{queue=\"audit\"} 0",
        "agentmesh_api_auth_failures_total 0",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    assert!(
        !out.contains("# EOF"),
        "Prometheus 0.0.4 text, not OpenMetrics"
    );
}

#[test]
fn verbs_past_the_cap_fold_into_other() {
    let m = Metrics::default();
    for i in 0..MAX_VERB_SERIES + 5 {
        m.command_finished(&format!("v{i}"), "ok", None);
    }
    let out = m.render(0);
    assert!(out.contains("agentmesh_commands_total{verb=\"_other\",status=\"ok\"} 5"));
}

#[test]
fn draining_flag() {
    let m = Metrics::default();
    assert!(m.render(0).contains("agentmesh_draining 0"));
    let out = m.render_with(&Scrape {
        draining: true,
        ..Scrape::default()
    });
    assert!(out.contains("agentmesh_draining 1"), "{out}");
}

#[test]
fn certificate_expiry_per_agent_and_minimum() {
    let ca = mesh_certs::Ca::generate("test CA").unwrap();
    let soon = ca
        .issue_agent("edge-01", mesh_certs::Validity::days(2))
        .unwrap();
    let later = ca
        .issue_agent("edge-02", mesh_certs::Validity::days(30))
        .unwrap();
    let m = Metrics::default();
    m.agent_certificate_pem("edge-01", &soon.cert_pem);
    m.agent_certificate_pem("edge-02", &later.cert_pem);
    m.agent_certificate("edge-03", b"not a certificate");
    let out = m.render(0);
    let value = |prefix: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(prefix)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let one = value("agentmesh_agent_cert_expiry_seconds{agent=\"edge-01\"}");
    let two = value("agentmesh_agent_cert_expiry_seconds{agent=\"edge-02\"}");
    assert!(one > 86_400.0 && one <= 2.0 * 86_400.0, "{one}");
    assert!(two > 29.0 * 86_400.0, "{two}");
    assert_eq!(value("agentmesh_agent_cert_expiry_min_seconds "), one);
    assert!(!out.contains("edge-03"));
}
