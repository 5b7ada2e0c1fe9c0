//! An agent whose key is SEC1 (`EC PRIVATE KEY`, as `openssl ec` writes it) connects and signs
//! its results, and the real backend verifies the signature: the TLS loader and the signer
//! accept the same key forms, so results are never silently unsigned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use agentmesh_e2e::backend::{ADMIN_TOKEN, OPERATOR_TOKEN};
use agentmesh_e2e::{http, init_logging, Pki, TestAgent, TestHub};
use serde_json::json;

/// Rewrites `dir/key.pem` (PKCS#8) as SEC1 with openssl (required: the CI image has it).
fn convert_key_to_sec1(dir: &std::path::Path) {
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args(["ec", "-in"])
        .arg(&key)
        .output()
        .expect("openssl must be installed to run this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sec1 = String::from_utf8(out.stdout).unwrap();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    std::fs::write(&key, sec1).unwrap();
}

#[tokio::test]
async fn a_sec1_key_agent_signs_results_the_backend_verifies() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    convert_key_to_sec1(&edge_dir);
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let _agent = TestAgent::connect(&pki, &hub, "edge-01", &edge_dir).await;

    let body = json!({"verb": "echo", "args": {"message": "signed"}, "wait": true}).to_string();
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let command_id = r.json()["command_id"].as_str().unwrap().to_owned();

    let list = http::get(
        hub.http,
        "/api/v1/audit?agent=edge-01&kind=command_result&limit=1000",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let records = list.json()["records"].as_array().unwrap().clone();
    let result = records
        .iter()
        .find(|r| r["kind"] == "command_result" && r["command_id"] == command_id.as_str())
        .unwrap_or_else(|| panic!("no command_result for {command_id}: {records:?}"));
    let details = &result["details"];
    // The backend only copies the signature fields in after `ResultSignature::verify` passed.
    assert_eq!(details["agent_pin"], edge.pin.as_str(), "{result}");
    assert!(details["signature"].is_string(), "{result}");
    assert!(details.get("unsigned").is_none(), "{result}");
    assert!(details.get("signature_invalid").is_none(), "{result}");
    let signature = agentmesh_audit::ResultSignature::from_details(details)
        .unwrap()
        .unwrap();
    signature.verify().unwrap();
}
