//! `meshctl` end to end: the real binary against a real backend and real agents over TLS.
//! Tables, JSON and YAML output, `run`'s output and exit code, a fan-out's summary and exit
//! code, a parameter refused before anything is sent, and an unreachable backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::http;
use agentmesh_e2e::meshctl::{home, meshctl, meshctl_fleet, serves_events};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_as_a_table_as_json_and_as_yaml() {
    let fleet = meshctl_fleet(&[("web-1", "web"), ("db-1", "db")]).await;
    let url = format!("http://{}", fleet.hub.http);
    let home = home(&fleet);
    let ctl =
        |args: &'static [&'static str]| meshctl(Some(&url), Some(VIEWER_TOKEN), &home, &[], args);

    // Not a terminal: JSON by default, the API's own answer.
    let run = ctl(&["agents"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    assert_eq!(v["count"], 2, "{v}");

    let run = ctl(&["agents", "--output", "table"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", run.stdout);
    for col in [
        "STATE",
        "SITE",
        "HOSTNAME",
        "LABELS",
        "VERSION",
        "LAST SEEN",
        "CERT EXPIRY",
    ] {
        assert!(lines[0].contains(col), "{col}: {}", run.stdout);
    }
    let web = lines
        .iter()
        .find(|l| l.starts_with("web-1"))
        .expect("web-1 row");
    assert!(
        web.contains("connected") && web.contains("role=web"),
        "{web}"
    );
    assert!(
        !run.stdout.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    // Certificate expiry comes from /metrics (the agent routes do not carry it): a date and
    // the days left.
    assert!(web.trim_end().ends_with("d)"), "{web}");

    let run = ctl(&["agents", "--label", "role=db", "-o", "json"]).await;
    assert_eq!(run.json()["count"], 1, "{run:?}");

    let run = ctl(&["agents", "-o", "yaml"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.starts_with("agents:\n"), "{}", run.stdout);
    assert!(run.stdout.contains("count: 2"), "{}", run.stdout);

    // One agent with its verbs and their schemas.
    let run = ctl(&["agent", "web-1", "-o", "table"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("typed"), "{}", run.stdout);
    assert!(run.stdout.contains("integer [1, 10]"), "{}", run.stdout);
    assert!(run.stdout.contains("one of red|blue"), "{}", run.stdout);
    let run = ctl(&["agent", "nope"]).await;
    assert_eq!(run.code, Some(3), "404 is an API error: {run:?}");
    assert!(run.stderr.contains("meshctl: "), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_the_output_and_exits_with_the_commands_code() {
    let fleet = meshctl_fleet(&[("web-1", "web")]).await;
    let url = format!("http://{}", fleet.hub.http);
    let home = home(&fleet);
    let ctl =
        |args: &'static [&'static str]| meshctl(Some(&url), Some(OPERATOR_TOKEN), &home, &[], args);

    let run = ctl(&["run", "web-1", "echo", "message=hello"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(0), "hello\n"),
        "{run:?}"
    );

    let run = ctl(&["run", "web-1", "exit3"]).await;
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(run.stdout, "to-stdout\n");
    assert!(run.stderr.contains("to-stderr"), "{run:?}");

    let run = ctl(&["run", "web-1", "fail"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");

    // Asked for JSON: the command record, and still the command's exit code.
    let run = ctl(&["run", "web-1", "exit3", "-o", "json"]).await;
    assert_eq!(run.code, Some(3), "{run:?}");
    let rec = run.json();
    assert_eq!(
        (rec["status"].as_str(), rec["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );

    // --async: the id now, the record later through `show`.
    let run = ctl(&[
        "run",
        "web-1",
        "echo",
        "message=later",
        "--async",
        "-o",
        "json",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let id = run.json()["command_id"].as_str().unwrap().to_owned();
    let done = agentmesh_e2e::fleet::wait_final(&fleet.hub, &id).await;
    assert_eq!(done["stdout"], "later\n");
    let show = meshctl(
        Some(&url),
        Some(VIEWER_TOKEN),
        &home,
        &[],
        &["show", &id, "-o", "json"],
    )
    .await;
    assert_eq!(show.json()["stdout"], "later\n", "{show:?}");
    let history = meshctl(
        Some(&url),
        Some(VIEWER_TOKEN),
        &home,
        &[],
        &["history", "--agent", "web-1"],
    )
    .await;
    let listed = history.json();
    let ids: Vec<&str> = listed["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["command_id"].as_str())
        .collect();
    assert!(ids.contains(&id.as_str()), "{ids:?}");

    // A viewer may not run: the server's message, the auth exit code.
    let run = meshctl(
        Some(&url),
        Some(VIEWER_TOKEN),
        &home,
        &[],
        &["run", "web-1", "echo", "message=x"],
    )
    .await;
    assert_eq!(run.code, Some(4), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_parameter_is_refused_before_anything_is_sent() {
    let fleet = meshctl_fleet(&[("web-1", "web")]).await;
    let url = format!("http://{}", fleet.hub.http);
    let home = home(&fleet);
    for (args, param) in [
        (
            &["run", "web-1", "typed", "name=abc", "count=many"][..],
            "count",
        ),
        (
            &["run", "web-1", "typed", "name=abc", "count=11"][..],
            "count",
        ),
        (&["run", "web-1", "typed", "name=ABC"][..], "name"),
        (
            &["run", "web-1", "typed", "name=abc", "color=green"][..],
            "color",
        ),
        (
            &["run", "web-1", "typed", "name=abc", "bogus=1"][..],
            "bogus",
        ),
        (
            &[
                "fanout",
                "--ids",
                "web-1",
                "typed",
                "name=abc",
                "flag=maybe",
            ][..],
            "flag",
        ),
    ] {
        let run = meshctl(Some(&url), Some(OPERATOR_TOKEN), &home, &[], args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(&format!("`{param}`")),
            "{args:?}: {run:?}"
        );
    }
    // Nothing reached the backend: no command in the history, none audited.
    let history = http::get(
        fleet.hub.http,
        "/api/v1/commands?agent=web-1",
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(history.json()["count"], 0, "{}", history.json());
    let audit = http::get(
        fleet.hub.http,
        "/api/v1/audit?agent=web-1",
        Some(VIEWER_TOKEN),
    )
    .await;
    let kinds: Vec<String> = audit.json()["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(!kinds.iter().any(|k| k.contains("command")), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_summarises_every_target_and_exits_0_only_when_all_succeeded() {
    let fleet = meshctl_fleet(&[("web-1", "web"), ("web-2", "web"), ("db-1", "db")]).await;
    let url = format!("http://{}", fleet.hub.http);
    let home = home(&fleet);

    let run = meshctl(
        Some(&url),
        Some(OPERATOR_TOKEN),
        &home,
        &[],
        &[
            "fanout",
            "--label",
            "role=web",
            "echo",
            "message=hi",
            "--progress",
            "always",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let job = run.json();
    assert_eq!(job["summary"]["targets"], 2, "{job}");
    assert_eq!(job["summary"]["ok"], 2, "{job}");
    assert_eq!(job["results"].as_array().unwrap().len(), 2);
    // Progress on stderr, fed by the event stream where the backend has one.
    let source = if serves_events(fleet.hub.http, OPERATOR_TOKEN).await {
        "[live]"
    } else {
        "[polling]"
    };
    let last = run
        .stderr
        .lines()
        .rfind(|l| l.starts_with("job "))
        .unwrap_or_else(|| panic!("{run:?}"));
    assert!(
        last.contains("2/2 done, 0 failed, 0 pending") && last.ends_with(source),
        "{last}"
    );

    let run = meshctl(
        Some(&url),
        Some(OPERATOR_TOKEN),
        &home,
        &[],
        &[
            "fanout",
            "--ids",
            "web-1,db-1",
            "exit3",
            "--max-concurrency",
            "1",
            "-o",
            "table",
        ],
    )
    .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    for agent in ["web-1", "db-1"] {
        let row = run
            .stdout
            .lines()
            .find(|l| l.starts_with(agent))
            .unwrap_or_else(|| panic!("{run:?}"));
        assert!(row.contains("failed") && row.contains(" 3 "), "{row}");
    }
    assert!(
        run.stdout.contains("2 targets: 0 ok, 2 failed"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_and_a_bad_token_get_clear_errors() {
    let fleet = meshctl_fleet(&[("web-1", "web")]).await;
    let home = home(&fleet);
    // A port nothing listens on: bound, then released.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{free}");
    let run = meshctl(Some(&url), Some(VIEWER_TOKEN), &home, &[], &["agents"]).await;
    assert_eq!(run.code, Some(5), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("cannot reach the backend at {url}")),
        "{run:?}"
    );

    let url = format!("http://{}", fleet.hub.http);
    let run = meshctl(Some(&url), Some("amt_wrong"), &home, &[], &["agents"]).await;
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("HTTP 401"), "{run:?}");

    let run = meshctl(None, Some(VIEWER_TOKEN), &home, &[], &["agents"]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("no backend URL"), "{run:?}");
}
