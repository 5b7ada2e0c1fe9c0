//! The hub's half of the proof of possession (`docs/protocol.md`, "Proof").
//!
//! - [`HubKey`] signs each `welcome` over the agent's `hello.nonce`, the agent id and the
//!   session id with the hub's TLS key, so an agent behind a TLS-terminating proxy can check it
//!   reached the hub whose pin it holds.
//! - [`challenge`] runs on a session whose certificate a trusted proxy forwarded: the agent
//!   signs a fresh nonce with its certificate key before the session is attached, so a proxy
//!   that only holds a copy of the certificate gets no session and no command.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agentmesh_protocol::proof::{self, NONCE_BYTES};
use agentmesh_protocol::{
    decode_agent_frame, AgentFrame, ChallengeFrame, HubFrame, WelcomeFrame, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::warn;

use super::identity::Rejection;
use super::tls::TlsSetupError;
use super::HubContext;

/// The hub's signing key (the `[hub] key` of its TLS certificate), replaceable at reload.
pub struct HubKey {
    current: RwLock<Arc<Loaded>>,
}

struct Loaded {
    key: EcdsaKeyPair,
    /// Base64 of the certificate's DER SubjectPublicKeyInfo, as sent in `welcome.hub_key`.
    spki_b64: String,
    pin: String,
}

impl std::fmt::Debug for HubKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubKey")
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

impl HubKey {
    /// Loads the key of `[hub] cert`/`key` (ECDSA P-256, PKCS#8 or SEC1); the key must be the
    /// certificate's, so the pin agents hold for the certificate covers the signature.
    pub fn load(cert: &Path, key: &Path) -> Result<HubKey, TlsSetupError> {
        Ok(HubKey {
            current: RwLock::new(Arc::new(load(cert, key)?)),
        })
    }

    /// Replaces the key (certificate reload); on error the old key stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsSetupError> {
        let fresh = Arc::new(load(cert, key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The pin of the signing key (= the hub certificate's pin).
    pub fn pin(&self) -> String {
        self.loaded().pin.clone()
    }

    /// `(signature, hub_key)` for `welcome`, both base64; `None` if signing failed.
    pub fn sign_welcome(
        &self,
        nonce: &str,
        agent_id: &str,
        session_id: &str,
    ) -> Option<(String, String)> {
        let loaded = self.loaded();
        let message = proof::welcome_message(nonce, agent_id, session_id);
        let sig = loaded.key.sign(&SystemRandom::new(), &message).ok()?;
        Some((proof::encode(sig.as_ref()), loaded.spki_b64.clone()))
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsSetupError> {
    let err = |path: &Path, message: String| TlsSetupError::Pem {
        path: path.display().to_string(),
        message,
    };
    let leaf = super::tls::load_certs(cert)?
        .into_iter()
        .next()
        .ok_or_else(|| err(cert, "no CERTIFICATE block".into()))?;
    let spki =
        mesh_certs::spki_der_from_cert_der(leaf.as_ref()).map_err(|e| err(cert, e.to_string()))?;
    let point = mesh_certs::ec_p256_point_from_spki(&spki).map_err(|e| {
        err(
            cert,
            format!("welcome signatures need an ECDSA P-256 key: {e}"),
        )
    })?;
    let pem = std::fs::read_to_string(key).map_err(|e| err(key, e.to_string()))?;
    let der = mesh_certs::p256_pkcs8_der_from_pem(&pem).map_err(|e| err(key, e.to_string()))?;
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &SystemRandom::new())
            .map_err(|e| err(key, format!("not a usable P-256 key: {e}")))?;
    if pair.public_key().as_ref() != point.as_slice() {
        return Err(err(key, format!("is not the key of {}", cert.display())));
    }
    Ok(Loaded {
        key: pair,
        spki_b64: proof::encode(&spki),
        pin: mesh_certs::pin_from_spki_der(&spki),
    })
}

/// The `welcome` of a session, signed over the agent's `nonce` when it sent one.
pub(super) fn welcome(
    ctx: &HubContext,
    nonce: Option<&str>,
    who: (&str, &str),
    challenge_follows: bool,
) -> HubFrame {
    let (agent_id, session_id) = who;
    let signed = nonce.and_then(|n| {
        let signed = ctx.hub_key.sign_welcome(n, agent_id, session_id);
        if signed.is_none() {
            warn!("cannot sign welcome; the agent will refuse this hub");
        }
        signed
    });
    let (signature, hub_key) = signed.unzip();
    HubFrame::Welcome(WelcomeFrame {
        protocol: PROTOCOL_VERSION,
        session_id: session_id.to_owned(),
        server_time: crate::clock::now_rfc3339(),
        heartbeat_secs: ctx.config.heartbeat_secs,
        max_message_bytes: ctx.config.max_message_bytes as u64,
        signature,
        hub_key,
        challenge_follows,
    })
}

/// Whether `signature_b64` is the agent's signature over the challenge, by the key in `spki`.
pub fn verify_challenge(
    spki: &[u8],
    nonce: &str,
    agent_id: &str,
    session_id: &str,
    signature_b64: &str,
) -> bool {
    let Ok(point) = mesh_certs::ec_p256_point_from_spki(spki) else {
        return false;
    };
    let Some(sig) = proof::decode(signature_b64) else {
        return false;
    };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .verify(&proof::challenge_message(nonce, agent_id, session_id), &sig)
        .is_ok()
}

/// A fresh challenge nonce.
fn fresh_nonce() -> Result<String, Rejection> {
    let mut bytes = [0u8; NONCE_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Rejection::new("challenge_failed", "no randomness for a challenge"))?;
    Ok(proof::encode_nonce(&bytes))
}

/// Sends `challenge` and waits up to `limit` for a `challenge_response` signed by the key in
/// `spki` (the forwarded certificate's). Anything else, a bad signature or silence is a
/// [`Rejection`] the caller closes with 4001.
pub(super) async fn challenge<S>(
    ws: &mut WebSocketStream<S>,
    who: (&str, &str),
    spki: &[u8],
    max_message_bytes: usize,
    limit: Duration,
) -> Result<(), Rejection>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (agent_id, session_id) = who;
    let nonce = fresh_nonce()?;
    let frame = HubFrame::Challenge(ChallengeFrame {
        nonce: nonce.clone(),
    });
    let answer = async {
        ws.send(Message::text(frame.to_json()))
            .await
            .map_err(|e| failed(format!("cannot send the challenge: {e}")))?;
        loop {
            let text = match ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(failed("closed before answering the challenge".into()))
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(failed(
                        "binary message instead of challenge_response".into(),
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(failed(format!("read failed: {e}"))),
            };
            return match decode_agent_frame(text.as_bytes(), max_message_bytes) {
                Ok(AgentFrame::ChallengeResponse(r)) => {
                    if verify_challenge(spki, &nonce, agent_id, session_id, &r.signature) {
                        Ok(())
                    } else {
                        Err(failed(
                            "challenge_response is not signed by the forwarded certificate's key"
                                .into(),
                        ))
                    }
                }
                Ok(other) => Err(failed(format!(
                    "expected challenge_response, got {}",
                    other.kind()
                ))),
                Err(e) => Err(failed(format!("expected challenge_response: {e}"))),
            };
        }
    };
    match tokio::time::timeout(limit, answer).await {
        Ok(result) => result,
        Err(_) => Err(Rejection::new(
            "challenge_timeout",
            format!(
                "no challenge_response within {}s: the forwarded certificate was not proven held",
                limit.as_secs()
            ),
        )),
    }
}

fn failed(detail: String) -> Rejection {
    Rejection::new("challenge_failed", detail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_key_must_be_its_certificates_and_signs_verifiable_welcomes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh_certs::Ca::generate("proof test CA").unwrap();
        let a = ca
            .issue_server("hub", &[], mesh_certs::Validity::days(1))
            .unwrap();
        let b = ca
            .issue_server("hub", &[], mesh_certs::Validity::days(1))
            .unwrap();
        a.save(&dir.path().join("a")).unwrap();
        b.save(&dir.path().join("b")).unwrap();
        let (cert_a, key_a) = (dir.path().join("a/cert.pem"), dir.path().join("a/key.pem"));
        let key_b = dir.path().join("b/key.pem");
        let err = HubKey::load(&cert_a, &key_b).unwrap_err().to_string();
        assert!(err.contains("is not the key of"), "{err}");

        let hub = HubKey::load(&cert_a, &key_a).unwrap();
        assert_eq!(hub.pin(), a.pin);
        let nonce = proof::encode_nonce(&[1; NONCE_BYTES]);
        let (sig, spki_b64) = hub.sign_welcome(&nonce, "edge-01", "s-1").unwrap();
        let spki = proof::decode(&spki_b64).unwrap();
        assert_eq!(mesh_certs::pin_from_spki_der(&spki), a.pin);
        let point = mesh_certs::ec_p256_point_from_spki(&spki).unwrap();
        let message = proof::welcome_message(&nonce, "edge-01", "s-1");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
            .verify(&message, &proof::decode(&sig).unwrap())
            .unwrap();

        // A reload with a mismatched pair keeps the old key.
        assert!(hub.reload(&cert_a, &key_b).is_err());
        assert_eq!(hub.pin(), a.pin);
    }

    /// The agent key of `protocol/tests/golden/agent_challenge_response.json` (a test vector:
    /// its private key was discarded after signing).
    const GOLDEN_AGENT_SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAECLQ40A3+XPb+sLXclw58753xLZoci6H4xwyembN8zkSi2WKy9fU6NCm8vE0eOqx1vSGXpALoibcMJzzZs+2gMA==";

    #[test]
    fn the_golden_challenge_response_is_a_real_test_vector() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/golden");
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
        };
        let (challenge, response) = (
            read("hub_challenge.json"),
            read("agent_challenge_response.json"),
        );
        let session = read("hub_welcome_signed.json")["session_id"].clone();
        let spki = proof::decode(GOLDEN_AGENT_SPKI).unwrap();
        let nonce = challenge["nonce"].as_str().unwrap();
        let signature = response["signature"].as_str().unwrap();
        let session = session.as_str().unwrap();
        assert!(verify_challenge(
            &spki, nonce, "edge-01", session, signature
        ));
        assert!(!verify_challenge(
            &spki, nonce, "edge-02", session, signature
        ));
    }
}
