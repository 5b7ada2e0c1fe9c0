//! The agent's half of the proof of possession (`docs/protocol.md`, "Proof").
//!
//! - [`check_welcome`]: the hub's signature over the `hello` nonce, the agent id and the
//!   session id must verify with a key whose pin is in `server_pins`. Through a front door
//!   ([`Route::FrontDoor`]) the signature is mandatory — it is the only proof that the hub,
//!   not the proxy, answered; on a direct connection it is checked when present (an older hub
//!   does not sign, and its TLS pin was already checked).
//! - [`ProofKey`]: signs a hub `challenge` with the client certificate's key.

use agentmesh_protocol::proof;
use agentmesh_protocol::WelcomeFrame;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
};

use crate::tls::Route;

/// Why the hub behind the connection was not proven to be the pinned hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A front door answered, but `welcome` carried no signature.
    #[error(
        "welcome is not signed, but this connection ends at a front door (its TLS pin is not in \
         server_pins): the hub behind it is unproven"
    )]
    Unsigned,
    /// The signing key's pin is not one of `server_pins`.
    #[error("hub pin {presented} is not in server_pins [{}]", expected.join(", "))]
    KeyNotPinned {
        /// Pin of the key that signed `welcome`.
        presented: String,
        /// The configured `server_pins`.
        expected: Vec<String>,
    },
    /// The signature or key is malformed or does not verify.
    #[error("welcome signature does not verify: {0}")]
    BadSignature(&'static str),
}

/// Checks `welcome` against the `nonce` this agent sent; returns the pin of the key that
/// signed it, if it was signed.
pub fn check_welcome(
    welcome: &WelcomeFrame,
    nonce: &str,
    agent_id: &str,
    server_pins: &[String],
    route: Route,
) -> Result<Option<String>, ProofError> {
    let (signature, key) = match (&welcome.signature, &welcome.hub_key) {
        (Some(s), Some(k)) => (s, k),
        (None, None) if route == Route::Direct => return Ok(None),
        (None, None) => return Err(ProofError::Unsigned),
        _ => {
            return Err(ProofError::BadSignature(
                "signature and hub_key come together",
            ))
        }
    };
    let spki = proof::decode(key).ok_or(ProofError::BadSignature("hub_key is not base64"))?;
    let pin = mesh_certs::pin_from_spki_der(&spki);
    if !server_pins.contains(&pin) {
        return Err(ProofError::KeyNotPinned {
            presented: pin,
            expected: server_pins.to_vec(),
        });
    }
    let point = mesh_certs::ec_p256_point_from_spki(&spki)
        .map_err(|_| ProofError::BadSignature("hub_key is not an ECDSA P-256 key"))?;
    let sig =
        proof::decode(signature).ok_or(ProofError::BadSignature("signature is not base64"))?;
    let message = proof::welcome_message(nonce, agent_id, &welcome.session_id);
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .verify(&message, &sig)
        .map_err(|_| ProofError::BadSignature("not made by hub_key over this session"))?;
    Ok(Some(pin))
}

/// A fresh `hello` nonce.
pub fn fresh_nonce() -> Option<String> {
    let mut bytes = [0u8; proof::NONCE_BYTES];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).ok()?;
    Some(proof::encode_nonce(&bytes))
}

/// The client certificate's key, answering `challenge`.
pub struct ProofKey {
    key: EcdsaKeyPair,
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProofKey(***)")
    }
}

impl ProofKey {
    /// From the PEM of the agent's key (ECDSA P-256, PKCS#8 or SEC1).
    pub fn from_pem(pem: &str) -> Result<ProofKey, String> {
        let der = mesh_certs::p256_pkcs8_der_from_pem(pem).map_err(|e| e.to_string())?;
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &SystemRandom::new())
            .map(|key| ProofKey { key })
            .map_err(|e| format!("not a usable P-256 key: {e}"))
    }

    /// Base64 signature over [`proof::challenge_message`].
    pub fn sign_challenge(
        &self,
        nonce: &str,
        agent_id: &str,
        session_id: &str,
    ) -> Result<String, String> {
        let message = proof::challenge_message(nonce, agent_id, session_id);
        self.key
            .sign(&SystemRandom::new(), &message)
            .map(|sig| proof::encode(sig.as_ref()))
            .map_err(|e| format!("cannot sign the challenge: {e}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
