//! The fleet page at `/ui/` in a real headless Chromium (DevTools protocol): token from the
//! URL fragment into sessionStorage, the fleet listed and updated live over the event
//! stream, `ping` and a typed verb run through the generated form, a hostile hostname and
//! label shown as text with no script run, no CSP violation, phone width, screenshots.
//!
//! Without chromium the browser test is skipped with a reason, unless
//! `AGENTMESH_REQUIRE_EXTERNAL=1` (CI), where it fails. `AGENTMESH_UPDATE_SCREENSHOT=1`
//! writes the screenshots to `docs/img/` for the README.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentmesh_e2e::backend::{HubOptions, OPERATOR_TOKEN};
use agentmesh_e2e::browser::{self, Browser};
use agentmesh_e2e::{agent, http, init_logging, raw, Pki, TestAgent, TestHub};
use serde_json::json;

const HOSTILE_HOST: &str =
    "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>";
const HOSTILE_LABEL: &str = "<script>window.__pwned=3</script>";

#[tokio::test]
async fn ui_assets_are_served_with_security_headers() {
    init_logging();
    let pki = Pki::new();
    let hub = TestHub::start(&pki, &[]).await;
    for (path, ty) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/pages.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        // No token needed for the page itself: it holds no data.
        let r = http::get(hub.http, path, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").is_some_and(|c| c.starts_with(ty)),
            "{path}: {}",
            r.headers
        );
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(r.header("referrer-policy").as_deref(), Some("no-referrer"));
    }
    for missing in ["/ui/nope.js", "/ui/..%2FCargo.toml"] {
        assert_eq!(
            http::get(hub.http, missing, None).await.status,
            404,
            "{missing}"
        );
    }
    hub.stop().await;
}

/// Keeps a raw agent session alive (answers pings by reading) until the test ends.
fn keep_reading(mut client: raw::RawClient) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move { while client.next_json(Duration::from_secs(3600)).await.is_some() {} },
    )
}

/// `docs/img/NAME` with `AGENTMESH_UPDATE_SCREENSHOT=1`, else the test's own temp dir (kept
/// as evidence when the test fails, removed when it passes).
fn screenshot_path(pki: &Pki, name: &str) -> std::path::PathBuf {
    if std::env::var("AGENTMESH_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    } else {
        pki.path().join(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_page_in_headless_chromium() {
    let Some(chromium) = browser::binary() else {
        return;
    };
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let (late, late_dir) = pki.agent("edge-02");
    let (evil, _) = pki.agent("evil-01");
    let enrol = [
        ("edge-01", edge.pin.as_str()),
        ("edge-02", late.pin.as_str()),
        ("evil-01", evil.pin.as_str()),
    ];
    let hub = TestHub::start_with(&pki, &enrol, HubOptions::default()).await;
    let edge_agent = TestAgent::connect(&pki, &hub, "edge-01", &edge_dir).await;
    // An agent that names itself in HTML.
    let mut hello = raw::hello("evil-01", 1);
    hello["hostname"] = json!(HOSTILE_HOST);
    hello["labels"] = json!({"note": HOSTILE_LABEL});
    let mut client = raw::connect(hub.hub, pki.ca.cert_pem(), &evil)
        .await
        .unwrap();
    client.send_json(&hello).await;
    let welcome = client
        .next_json(Duration::from_secs(20))
        .await
        .expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let evil_session = keep_reading(client);

    let mut b = Browser::launch(&chromium).await;
    let base = format!("http://{}/ui/", hub.http);
    b.navigate(&format!("{base}#token={OPERATOR_TOKEN}")).await;

    // The token left the address bar for sessionStorage.
    b.wait_for(
        "fleet rows",
        "document.querySelectorAll('tr[data-agent-id]').length >= 2",
    )
    .await;
    assert_eq!(b.eval("location.hash").await, json!(""));
    assert_eq!(b.eval("location.href").await, json!(base));
    assert_eq!(
        b.eval("sessionStorage.getItem('agentmesh.token')").await,
        json!(OPERATOR_TOKEN)
    );

    // The hostile hostname and label are text; none of their scripts ran.
    let row = "document.querySelector('tr[data-agent-id=\"evil-01\"]')";
    let host = b
        .eval(&format!("{row}.querySelector('td.hostname').textContent"))
        .await;
    assert_eq!(host, json!(HOSTILE_HOST));
    let labels = b
        .eval(&format!("{row}.querySelector('.chip').textContent"))
        .await;
    assert_eq!(labels, json!(format!("note={HOSTILE_LABEL}")));
    assert_eq!(
        b.eval(&format!("{row}.querySelectorAll('script, img').length"))
            .await,
        json!(0)
    );
    assert_eq!(b.eval("typeof window.__pwned").await, json!("undefined"));

    // Live: an agent that connects now appears without a reload (event stream in the page).
    b.wait_for(
        "stream live",
        "document.getElementById('live').textContent === 'live'",
    )
    .await;
    let late_cfg = agent::write_config(
        pki.path(),
        "edge-02",
        &late_dir,
        hub.hub,
        &[&hub.server_pin],
        "",
    );
    let late_agent = TestAgent::start(late_cfg);
    late_agent.wait_connected(&hub, "edge-02").await;
    b.wait_for(
        "edge-02 listed as connected",
        "(document.querySelector('tr[data-agent-id=\"edge-02\"] .badge') || {}).textContent === 'connected'",
    )
    .await;
    // The state filter.
    b.eval("(() => { const s = document.getElementById('f-state'); s.value = 'offline'; s.dispatchEvent(new Event('change')); return true; })()").await;
    assert_eq!(
        b.eval("document.querySelectorAll('tr[data-agent-id]').length")
            .await,
        json!(0)
    );
    b.eval("(() => { const s = document.getElementById('f-state'); s.value = ''; s.dispatchEvent(new Event('change')); return true; })()").await;
    std::fs::write(screenshot_path(&pki, "fleet.png"), b.screenshot().await).unwrap();

    // Run `ping` through the form on the agent page, then `echo` with a typed parameter.
    b.eval("location.hash = '#/agent/edge-01'").await;
    b.wait_for("run form", "document.getElementById('run-form')")
        .await;
    // The certificate's expiry, from the expiry series on /metrics.
    b.wait_for(
        "certificate expiry",
        "document.getElementById('cert-expiry').textContent.startsWith('in ')",
    )
    .await;
    let run = |verb: &str| {
        format!(
            "(() => {{ const v = document.getElementById('verb'); v.value = '{verb}'; \
             v.dispatchEvent(new Event('change')); return true; }})()"
        )
    };
    b.eval(&run("ping")).await;
    b.eval("document.getElementById('run').click()").await;
    b.wait_for(
        "ping result",
        "document.querySelector('#run-result[data-status=\"ok\"]')",
    )
    .await;
    b.eval(&run("echo")).await;
    let label = b
        .eval("document.querySelector('label[for=\"p-message\"]').textContent")
        .await;
    assert_eq!(label, json!("message (required)"));
    b.eval("document.getElementById('p-message').value = 'hello from the page'")
        .await;
    b.eval("document.getElementById('run').click()").await;
    let out = b
        .wait_for(
            "echo output",
            "(document.querySelector('#run-result[data-status=\"ok\"] .stdout') || {}).textContent",
        )
        .await;
    assert_eq!(out, json!("hello from the page\n"));
    // The agent's recent commands follow live (command_status events).
    b.wait_for(
        "agent history rows",
        "document.querySelectorAll('#agent-history tr[data-command-id]').length >= 2",
    )
    .await;
    b.viewport(1280, 1500, false).await;
    std::fs::write(screenshot_path(&pki, "run.png"), b.screenshot().await).unwrap();
    b.viewport(1280, 900, false).await;

    // History, fan-out with progress, audit.
    b.eval("location.hash = '#/history'").await;
    b.wait_for(
        "history rows",
        "document.querySelectorAll('tr[data-command-id]').length >= 2",
    )
    .await;
    b.eval("location.hash = '#/fanout'").await;
    b.wait_for("fan-out form", "document.getElementById('fo-labels')")
        .await;
    b.eval("document.getElementById('fo-labels').value = 'role=panel'")
        .await;
    b.eval(&run("ping")).await;
    b.eval("document.getElementById('run').click()").await;
    b.wait_for(
        "fan-out finished",
        "document.querySelector('#job-progress[data-finished=\"true\"]')",
    )
    .await;
    let progress = b
        .eval("document.getElementById('job-progress').textContent")
        .await;
    assert!(
        progress.as_str().unwrap_or_default().contains("2 ok"),
        "{progress}"
    );
    b.eval("location.hash = '#/audit'").await;
    b.wait_for(
        "audit rows",
        "document.querySelectorAll('#audit tbody tr').length > 0",
    )
    .await;

    // A phone: the fleet page fits 375 px (tables scroll inside their box).
    b.viewport(375, 800, true).await;
    b.eval("location.hash = '#/'").await;
    b.wait_for(
        "fleet rows",
        "document.querySelectorAll('tr[data-agent-id]').length >= 3",
    )
    .await;
    let width = b.eval("document.documentElement.scrollWidth").await;
    assert!(
        width.as_u64().is_some_and(|w| w <= 375),
        "page is {width} px wide at 375"
    );
    std::fs::write(screenshot_path(&pki, "phone.png"), b.screenshot().await).unwrap();

    let console = b.console();
    assert!(
        !console
            .iter()
            .any(|l| l.contains("Content Security Policy") || l.contains("exception")),
        "{console:#?}"
    );
    b.close().await;
    evil_session.abort();
    late_agent.stop().await;
    edge_agent.stop().await;
    hub.stop().await;
}
