#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;

const PIN: &str = "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

fn minimal() -> String {
    format!(
        "[agent]\nid = \"edge-01\"\n\n[outbound]\nbackend_url = \"wss://hub.test:8081\"\n\
         ca = \"tls/ca.pem\"\ncert = \"/etc/tls/cert.pem\"\nkey = \"tls/key.pem\"\n\
         server_pins = [\"{PIN}\"]\n"
    )
}

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn parse(text: &str, env: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
    GatewayConfig::from_str_with_env(text, Path::new("/etc/agentmesh/gateway.toml"), vars(env))
}

#[test]
fn defaults_are_applied() {
    let c = parse(&minimal(), &[]).unwrap();
    assert_eq!(c.agent.site, "default");
    assert_eq!(c.agent.state_dir, Path::new("/var/lib/agentmesh"));
    assert_eq!(c.agent.health_listen, None);
    assert!(c.agent.labels.is_empty());
    assert_eq!(c.outbound.reconnect_min_ms, 500);
    assert_eq!(c.outbound.reconnect_max_ms, 30_000);
    assert_eq!(c.outbound.healthy_after_secs, 30);
    assert_eq!(c.outbound.max_message_bytes, 1024 * 1024);
    assert_eq!(c.limits.max_concurrency, 4);
    assert_eq!(c.limits.commands_per_minute, 120);
    assert_eq!(c.agent.renew_before_days, 15);
    assert_eq!(
        c.audit_path(),
        Path::new("/var/lib/agentmesh/gateway-audit.log")
    );
    assert_eq!(c.audit.path, Some(c.audit_path()));
}

#[test]
fn relative_paths_follow_the_config_file() {
    let text = format!("{}\n[audit]\npath = \"log/audit.log\"\n", minimal())
        .replace("[agent]\n", "[agent]\nstate_dir = \"state\"\n");
    let c = parse(&text, &[]).unwrap();
    assert_eq!(c.outbound.ca, Path::new("/etc/agentmesh/tls/ca.pem"));
    assert_eq!(c.outbound.cert, Path::new("/etc/tls/cert.pem"));
    assert_eq!(c.agent.state_dir, Path::new("/etc/agentmesh/state"));
    assert_eq!(c.audit_path(), Path::new("/etc/agentmesh/log/audit.log"));
}

#[test]
fn default_audit_path_follows_a_relative_state_dir() {
    let text = minimal().replace("[agent]\n", "[agent]\nstate_dir = \"state\"\n");
    let c = parse(&text, &[]).unwrap();
    assert_eq!(
        c.audit_path(),
        Path::new("/etc/agentmesh/state/gateway-audit.log")
    );
}

#[test]
fn default_audit_path_of_a_relative_config_is_resolved_once() {
    let text = minimal().replace("[agent]\n", "[agent]\nstate_dir = \"state\"\n");
    let c =
        GatewayConfig::from_str_with_env(&text, Path::new("dev/gateway.toml"), Vec::new()).unwrap();
    assert_eq!(c.agent.state_dir, Path::new("dev/state"));
    assert_eq!(c.audit_path(), Path::new("dev/state/gateway-audit.log"));
}

#[test]
fn env_overrides_win_and_are_validated() {
    let c = parse(&minimal(), &[("AGENTMESH_AGENT_ID", "edge-02")]).unwrap();
    assert_eq!(c.agent.id, "edge-02");

    let c = parse(
        &minimal(),
        &[
            (
                "AGENTMESH_OUTBOUND_BACKEND_URL",
                "wss://other.test/ws/agent",
            ),
            ("AGENTMESH_OUTBOUND_RECONNECT_MAX_MS", "60000"),
            ("AGENTMESH_LIMITS_MAX_CONCURRENCY", "8"),
            ("AGENTMESH_AUDIT_PATH", "audit.log"),
            ("AGENTMESH_AGENT_HEALTH_LISTEN", "127.0.0.1:9000"),
        ],
    )
    .unwrap();
    assert_eq!(c.outbound.backend_url, "wss://other.test/ws/agent");
    assert_eq!(c.outbound.reconnect_max_ms, 60_000);
    assert_eq!(c.limits.max_concurrency, 8);
    assert_eq!(c.audit_path(), Path::new("/etc/agentmesh/audit.log"));
    assert_eq!(
        c.agent.health_listen,
        Some("127.0.0.1:9000".parse().unwrap())
    );

    let e = parse(
        &minimal(),
        &[("AGENTMESH_OUTBOUND_RECONNECT_MIN_MS", "soon")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("outbound.reconnect_min_ms"), "{e}");
    assert!(e.contains("AGENTMESH_OUTBOUND_RECONNECT_MIN_MS"), "{e}");

    let e = parse(&minimal(), &[("AGENTMESH_OUTBOUND_BACKEND_URL", "ws://x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("outbound.backend_url"), "{e}");
    assert!(e.contains("AGENTMESH_OUTBOUND_BACKEND_URL"), "{e}");

    let e = parse(&minimal(), &[("AGENTMESH_AGENT_NAME", "x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("AGENTMESH_AGENT_NAME"), "{e}");
}

#[test]
fn server_pins_from_env_replace_the_file() {
    let other = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let c = parse(
        &minimal(),
        &[("AGENTMESH_OUTBOUND_SERVER_PINS", &format!("{PIN},{other}"))],
    )
    .unwrap();
    assert_eq!(c.outbound.server_pins, [PIN, other]);
}

#[test]
fn backend_url_defaults_the_path_and_port() {
    let u = parse_backend_url("wss://hub.test").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("hub.test", 443));
    assert_eq!(u.path, "/ws/agent");
    assert_eq!(u.url, "wss://hub.test/ws/agent");
    let u = parse_backend_url("wss://[::1]:8081/ws/").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("::1", 8081));
    assert_eq!(u.url, "wss://[::1]:8081/ws/");
    assert!(parse_backend_url("wss://user:pw@hub.test").is_err());
    assert!(parse_backend_url("hub.test:8081").is_err());
}

#[test]
fn verb_specs_carry_types_and_constraints() {
    let text = format!(
        "{}\n[[verbs]]\nname = \"mk\"\nprogram = \"/bin/mk\"\ntimeout_secs = 7\n\
         args = [\"--n={{n}}\", \"{{who}}\", \"{{{{literal}}}}\"]\n\
         params.n = {{ type = \"integer\", min = 1, max = 9, required = true }}\n\
         params.who = {{ type = \"string\", pattern = \"[a-z]+\", secret = true }}\n",
        minimal()
    );
    let c = parse(&text, &[]).unwrap();
    let spec = c.verbs[0].to_spec();
    assert_eq!(spec.timeout_ms, 7_000);
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        json["params"]["n"],
        serde_json::json!({"type": "integer", "min": 1, "max": 9, "required": true})
    );
    assert_eq!(json["params"]["who"]["secret"], true);
    let specs = c.advertised_verbs();
    assert_eq!(specs[0].name, "ping");
    assert_eq!(specs[0].timeout_ms, 5_000);
    assert_eq!(specs[1].name, "sysinfo");
    assert_eq!(specs[1].timeout_ms, 10_000);
    assert!(specs[0].params.is_empty() && specs[1].params.is_empty());
}

#[test]
fn at_most_the_hubs_pattern_budget_is_accepted() {
    let max = agentmesh_protocol::pattern::MAX_PATTERNS_PER_HELLO;
    let verbs = |n: usize| {
        (0..n)
            .map(|i| {
                format!(
                    "[[verbs]]\nname = \"v{i}\"\nprogram = \"/bin/echo\"\nargs = [\"{{p}}\"]\n\
                     params.p = {{ type = \"string\", pattern = \"[a-z]+\" }}\n"
                )
            })
            .collect::<String>()
    };
    parse(&format!("{}{}", minimal(), verbs(max)), &[]).unwrap();
    let err = parse(&format!("{}{}", minimal(), verbs(max + 1)), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("verbs[{max}].params.p.pattern")),
        "{err}"
    );
}

#[test]
fn front_door_pins_default_to_none_and_come_from_file_or_env() {
    assert!(parse(&minimal(), &[])
        .unwrap()
        .outbound
        .front_door_pins
        .is_empty());
    let text = minimal().replace(
        "server_pins",
        &format!("front_door_pins = [\"{PIN}\"]\nserver_pins"),
    );
    assert_eq!(parse(&text, &[]).unwrap().outbound.front_door_pins, [PIN]);
    let c = parse(&minimal(), &[("AGENTMESH_OUTBOUND_FRONT_DOOR_PINS", PIN)]).unwrap();
    assert_eq!(c.outbound.front_door_pins, [PIN]);
}

#[test]
fn a_pin_in_both_lists_is_warned_about() {
    let text = minimal().replace(
        "server_pins",
        &format!("front_door_pins = [\"{PIN}\"]\nserver_pins"),
    );
    let c = parse(&text, &[]).unwrap();
    let warnings = config_warnings(&c);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("outbound.server_pins[0]") && w.contains("front_door_pins")),
        "{warnings:?}"
    );
    assert!(config_warnings(&parse(&minimal(), &[]).unwrap())
        .iter()
        .all(|w| !w.contains("front_door_pins")));
}
