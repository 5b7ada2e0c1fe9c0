//! The `gateway-agent` binary's subcommands and exit codes: `audit verify` (0 good, 1 broken,
//! 64 usage) and `enroll` (64 usage, 1 failure).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use gateway_agent::audit::AgentAudit;

fn gateway_agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway-agent"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn write_log(path: &Path) {
    let audit = AgentAudit::open(path, "edge-01").unwrap();
    audit.refused(4004, "revoked");
    audit.disconnected("s-1", Some(4004), "revoked");
    audit
        .enrolled("renewal", "sha256//x", serde_json::json!({}))
        .await;
    audit.flush().await;
}

#[tokio::test]
async fn audit_verify_reports_the_first_broken_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway-audit.log");
    write_log(&log).await;
    let out = gateway_agent(&["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: 3 records"),
        "{}",
        text(&out.stdout)
    );

    let tampered = dir.path().join("tampered.log");
    let original = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&tampered, original.replacen("revoked", "REVOKED", 1)).unwrap();
    let out = gateway_agent(&["audit", "verify", tampered.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("BROKEN") && err.contains("seq 1"), "{err}");

    let out = gateway_agent(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
}

#[test]
fn enroll_usage_errors_exit_64_and_failures_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let out_dir = dir.path().join("tls");
    let common = |api: &str| {
        vec![
            "enroll".to_owned(),
            "--api".to_owned(),
            api.to_owned(),
            "--token".to_owned(),
            "amj_secret".to_owned(),
            "--id".to_owned(),
            "edge-01".to_owned(),
            "--ca".to_owned(),
            ca.display().to_string(),
            "--out".to_owned(),
            out_dir.display().to_string(),
        ]
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        gateway_agent(&refs)
    };
    // Plain http to a remote address is refused before anything is sent.
    let out = run(common("http://192.0.2.1:8080"));
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("loopback"),
        "{}",
        text(&out.stderr)
    );
    // Nothing listens there: a failure, said clearly, and the token is never echoed.
    let out = run(common("http://127.0.0.1:1"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
    assert!(!err.contains("amj_secret"), "{err}");
    assert!(!out_dir.exists());
    // A missing flag is a usage error.
    let out = gateway_agent(&["enroll", "--api", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(gateway_agent(&["--help"]).status.code(), Some(0));
}

/// A one-shot stand-in for `POST /api/v1/enroll`: signs the CSR it is sent.
async fn fake_enroll_api(ca: mesh_certs::Ca) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let body = loop {
            let n = stream.read(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if body.len() >= len {
                    break body.to_owned();
                }
            }
        };
        let request: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(request["token"], "amj_secret");
        let issued = ca
            .sign_agent_csr(
                request["csr"].as_str().unwrap(),
                "edge-01",
                mesh_certs::Validity::days(30),
            )
            .unwrap();
        let answer = serde_json::json!({
            "agent_id": "edge-01",
            "pin": issued.pin,
            "hub_pins": ["sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="],
            "certificate": issued.cert_pem,
            "ca": issued.ca_pem,
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(response.as_bytes()).await.unwrap();
    });
    addr
}

#[tokio::test]
async fn enroll_writes_the_identity_prints_the_config_and_audits_into_an_existing_log() {
    let dir = tempfile::tempdir().unwrap();
    let ca = mesh_certs::Ca::generate("test CA").unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let log = dir.path().join("gateway-audit.log");
    write_log(&log).await;
    let api = fake_enroll_api(ca).await;
    let out_dir = dir.path().join("tls");
    let args: Vec<String> = [
        "enroll",
        "--api",
        &format!("http://{api}"),
        "--id",
        "edge-01",
        "--ca",
        &dir.path().join("ca.pem").display().to_string(),
        "--out",
        &out_dir.display().to_string(),
        "--audit",
        &log.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The token comes from the environment, so it never shows in `ps`.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_gateway-agent"))
            .args(&args)
            .env("AGENTMESH_JOIN_TOKEN", "amj_secret")
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let cert = std::fs::read_to_string(out_dir.join("cert.pem")).unwrap();
    let pin = mesh_certs::pin_from_pem(&cert).unwrap();
    assert!(stdout.contains(&pin), "{stdout}");
    assert!(
        stdout.contains("[outbound]") && stdout.contains("wss://127.0.0.1:8081/ws/agent"),
        "{stdout}"
    );
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = records.last().unwrap();
    assert_eq!(last["kind"], "enrolled");
    assert_eq!(last["details"]["source"], "join_token");
    assert_eq!(last["details"]["pin"], pin.as_str());
    assert!(!std::fs::read_to_string(&log)
        .unwrap()
        .contains("amj_secret"));
    agentmesh_audit::verify_files(&[log]).unwrap();
}
