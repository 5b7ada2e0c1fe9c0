//! Failures that stop the agent before it dials: they are returned, clearly, not retried.
#![allow(clippy::unwrap_used)]

mod support;

use gateway_agent::{run, RunError};
use support::Pki;

#[tokio::test]
async fn health_bind_error_names_the_key_and_address() {
    let pki = Pki::new("edge-01");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut config = pki.config(1, &[&pki.server.pin], "");
    config.agent.health_listen = Some(addr);
    let err = run(config, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, RunError::HealthBind { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("agent.health_listen"), "{message}");
    assert!(message.contains(&addr.to_string()), "{message}");
}

#[tokio::test]
async fn unreadable_key_is_a_tls_setup_error() {
    let pki = Pki::new("edge-01");
    let mut config = pki.config(1, &[&pki.server.pin], "");
    config.outbound.key = pki.path().join("missing-key.pem");
    let err = run(config, std::future::pending()).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RunError::Tls(_)), "{message}");
    assert!(message.contains("missing-key.pem"), "{message}");
}
