//! SIGHUP reloads on real processes: a real `backend-agent` child (and a real `gateway-agent`
//! child for the agent side), real TLS, the config file edited between signals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit_proc;
mod reload_proc;

use std::process::{Command, Stdio};

use agentmesh_e2e::backend::VIEWER_TOKEN;
use agentmesh_e2e::{agent, eventually, http, PATIENCE};
use audit_proc::Setup;
use reload_proc::{
    agent_view, append, audited, gateway_binary, hup, served_pin, verbs_of, Backend, UPTIME_VERB,
};
use serde_json::Value;

const NEW_TOKEN: &str = "amt_reloaded_viewer_token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_token_and_keeps_every_session() {
    let setup = Setup::new(|t| t).await;
    let mut backend = Backend::start(&setup).await;
    let _agent = setup.connect_agent().await;
    let before = agent_view(&setup).await;
    assert_eq!(
        http::get(setup.http, "/api/v1/agents", Some(NEW_TOKEN))
            .await
            .status,
        401
    );

    // A token added, and a store setting that needs a restart.
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("[store]\n", "[store]\nretention_days = 7\n");
    std::fs::write(&setup.config, text).unwrap();
    append(
        &setup.config,
        &format!(
            "\n[[tokens]]\nname = \"reloaded\"\nsha256 = \"{}\"\nrole = \"viewer\"\n",
            backend_agent::auth::token_sha256_hex(NEW_TOKEN)
        ),
    );
    hup(backend.child.id());
    let http_addr = setup.http;
    eventually("the new token works", PATIENCE, || async move {
        http::get(http_addr, "/api/v1/agents", Some(NEW_TOKEN))
            .await
            .status
            == 200
    })
    .await;
    audited(&setup, "config_reloaded", 1).await;
    let record: Value = std::fs::read_to_string(setup.default_audit_log())
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["kind"] == "config_reloaded")
        .unwrap();
    assert_eq!(
        record["details"]["changed"],
        serde_json::json!(["tokens"]),
        "{record}"
    );
    assert_eq!(
        record["details"]["needs_restart"],
        serde_json::json!(["store"]),
        "{record}"
    );

    let after = agent_view(&setup).await;
    assert_eq!(after["connected"], true);
    assert_eq!(after["session_id"], before["session_id"], "same session");
    assert_eq!(after["connected_since"], before["connected_since"]);
    assert!(backend.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let setup = Setup::new(|t| t).await;
    let mut backend = Backend::start(&setup).await;
    let _agent = setup.connect_agent().await;
    let before = agent_view(&setup).await;
    let good = std::fs::read_to_string(&setup.config).unwrap();

    for (n, broken) in [
        format!("{good}\n[hub\n"),
        good.replace("[limits]\n", "[limits]\nno_such_key = 1\n"),
        good.replace("/server/cert.pem", "/server/missing.pem"),
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(&setup.config, broken).unwrap();
        hup(backend.child.id());
        audited(&setup, "config_reload_failed", n + 1).await;
        assert!(backend.alive(), "a refused reload never stops the daemon");
    }

    let after = agent_view(&setup).await;
    assert_eq!(after["session_id"], before["session_id"], "same session");
    assert_eq!(after["connected"], true);
    assert_eq!(setup.command().await.status, 200, "still serving commands");

    // And a good file afterwards still reloads.
    std::fs::write(&setup.config, &good).unwrap();
    hup(backend.child.id());
    audited(&setup, "config_reloaded", 1).await;
    assert!(backend.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_hub_certificate_serves_new_handshakes_while_the_old_session_stays() {
    let setup = Setup::new(|t| t).await;
    let mut backend = Backend::start(&setup).await;
    let _agent = setup.connect_agent().await;
    let before = agent_view(&setup).await;
    assert_eq!(served_pin(&setup).await, setup.server_pin);

    let fresh = setup
        .pki
        .ca
        .issue_server(
            "localhost",
            &["127.0.0.1".to_owned()],
            mesh_certs::Validity::days(2),
        )
        .unwrap();
    fresh.save(&setup.pki.path().join("server2")).unwrap();
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("/server/cert.pem", "/server2/cert.pem")
        .replace("/server/key.pem", "/server2/key.pem");
    std::fs::write(&setup.config, text).unwrap();
    hup(backend.child.id());
    audited(&setup, "config_reloaded", 1).await;

    assert_eq!(served_pin(&setup).await, fresh.pin, "new handshakes");
    assert_ne!(fresh.pin, setup.server_pin);
    let after = agent_view(&setup).await;
    assert_eq!(after["connected"], true);
    assert_eq!(
        after["session_id"], before["session_id"],
        "the old session stays"
    );
    assert!(backend.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sighup_readvertises_verbs_applies_limits_and_refuses_a_broken_file() {
    let setup = Setup::new(|t| t).await;
    let _backend = Backend::start(&setup).await;
    let write = |extra: &str| {
        agent::write_config(
            setup.pki.path(),
            "edge-01",
            &setup.edge_dir,
            setup.hub,
            &[&setup.server_pin],
            extra,
        )
    };
    let config = write("");
    let log_path = config.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(gateway_binary())
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let http_addr = setup.http;
    eventually("agent connected", PATIENCE, || async move {
        let r = http::get(http_addr, "/api/v1/agents/edge-01", Some(VIEWER_TOKEN)).await;
        r.status == 200 && r.json()["connected"] == true
    })
    .await;
    assert!(!verbs_of(&agent_view(&setup).await).contains(&"uptime".to_owned()));

    write(UPTIME_VERB);
    hup(child.id());
    let setup_ref = &setup;
    eventually("the new verb is listed", PATIENCE, || async move {
        let view = agent_view(setup_ref).await;
        view["connected"] == true && verbs_of(&view).contains(&"uptime".to_owned())
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "agent alive");
    let session = agent_view(&setup).await["session_id"].clone();

    // Limits are not advertised: the session stays and the new limit applies.
    write(&format!(
        "{UPTIME_VERB}\n[limits]\ncommands_per_minute = 1\n"
    ));
    hup(child.id());
    eventually("the second reload is applied", PATIENCE, || {
        let log_path = log_path.clone();
        async move {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .matches("config reloaded")
                .count()
                >= 2
        }
    })
    .await;
    assert_eq!(setup.command().await.status, 200);
    let refused = setup.command().await;
    assert!(
        refused.body.contains("commands_per_minute") || refused.body.contains("rate_limited"),
        "{}",
        refused.body
    );
    assert_eq!(
        agent_view(&setup).await["session_id"],
        session,
        "a reload that keeps the advertisement keeps the session"
    );

    std::fs::write(&config, "[agent\nbroken").unwrap();
    hup(child.id());
    eventually("the refusal is logged", PATIENCE, || {
        let log_path = log_path.clone();
        async move {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("config reload refused")
        }
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "agent alive");
    let view = agent_view(&setup).await;
    assert_eq!(view["connected"], true);
    assert_eq!(
        view["session_id"], session,
        "a refused reload keeps the session"
    );
    assert!(verbs_of(&view).contains(&"uptime".to_owned()));
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_agents_labels_limits_and_log_level() {
    let setup = Setup::new(|t| t).await;
    let mut backend = Backend::start(&setup).await;
    let _agent = setup.connect_agent().await;
    let before = agent_view(&setup).await;
    let log_path = setup.config.with_extension("log");
    assert!(!std::fs::read_to_string(&log_path)
        .unwrap()
        .contains("DEBUG"));

    let (edge2, edge2_dir) = setup.pki.agent("edge-02");
    let text = std::fs::read_to_string(&setup.config).unwrap().replace(
        "operator_commands_per_sec = 0\n",
        "operator_commands_per_sec = 1\noperator_burst = 1\n",
    );
    std::fs::write(
        &setup.config,
        format!(
            "{text}\n[[agents]]\nid = \"edge-02\"\npins = [\"{}\"]\nlabels = {{ tier = \"gold\" }}\n\
             \n[log]\nlevel = \"debug\"\n",
            edge2.pin
        ),
    )
    .unwrap();
    hup(backend.child.id());
    audited(&setup, "config_reloaded", 1).await;

    // [[agents]]: the new agent is enrolled, with its authoritative labels.
    let cfg = agent::write_config(
        setup.pki.path(),
        "edge-02",
        &edge2_dir,
        setup.hub,
        &[&setup.server_pin],
        "",
    );
    let _edge2 = agentmesh_e2e::TestAgent::start(cfg);
    let http_addr = setup.http;
    eventually("edge-02 connected", PATIENCE, || async move {
        let r = http::get(http_addr, "/api/v1/agents/edge-02", Some(VIEWER_TOKEN)).await;
        r.status == 200 && r.json()["connected"] == true
    })
    .await;
    let view = http::get(setup.http, "/api/v1/agents/edge-02", Some(VIEWER_TOKEN))
        .await
        .json();
    assert_eq!(view["authoritative_labels"]["tier"], "gold", "{view}");

    // [limits]: the operator bucket is 1 now, so a burst is refused.
    let mut refused = false;
    for _ in 0..20 {
        let status = setup.command().await.status;
        assert!(status == 200 || status == 429, "{status}");
        if status == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the reloaded operator limit applies");

    // [log] level: debug records appear without a restart.
    eventually("debug logging", PATIENCE, || {
        let log_path = log_path.clone();
        async move {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("DEBUG")
        }
    })
    .await;

    let after = agent_view(&setup).await;
    assert_eq!(after["session_id"], before["session_id"], "same session");
    assert!(backend.alive());
}
