//! The byte strings each side signs to prove it holds its key (`docs/protocol.md`, "Proof").
//!
//! - The hub signs [`welcome_message`] with its TLS key, over the nonce the agent sent in
//!   `hello`, so an agent behind a TLS-terminating proxy still knows it reached the hub.
//! - The agent signs [`challenge_message`] with its certificate key, over the nonce of a
//!   `challenge`, so a certificate forwarded by a proxy is proven held, not replayed.
//!
//! Both are `CONTEXT || 0x00` followed by `nonce`, `agent_id` and `session_id`, each as a
//! 4-byte big-endian length and its UTF-8 bytes: unambiguous, and never equal to a message
//! signed in the other context (or to a result signature, whose message has no NUL byte).
//! Signatures are ECDSA P-256 with SHA-256, ASN.1 DER, standard base64. This module knows the
//! bytes only; the daemons hold the keys.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Length of a nonce before base64 encoding.
pub const NONCE_BYTES: usize = 32;

/// Context label of the hub's `welcome` signature.
pub const WELCOME_CONTEXT: &str = "agentmesh-welcome-v1";

/// Context label of the agent's `challenge_response` signature.
pub const CHALLENGE_CONTEXT: &str = "agentmesh-challenge-v1";

/// The bytes the hub signs in `welcome`.
pub fn welcome_message(nonce: &str, agent_id: &str, session_id: &str) -> Vec<u8> {
    signed_bytes(WELCOME_CONTEXT, &[nonce, agent_id, session_id])
}

/// The bytes the agent signs in `challenge_response`.
pub fn challenge_message(nonce: &str, agent_id: &str, session_id: &str) -> Vec<u8> {
    signed_bytes(CHALLENGE_CONTEXT, &[nonce, agent_id, session_id])
}

fn signed_bytes(context: &str, fields: &[&str]) -> Vec<u8> {
    let len: usize = fields.iter().map(|f| 4 + f.len()).sum();
    let mut out = Vec::with_capacity(context.len() + 1 + len);
    out.extend_from_slice(context.as_bytes());
    out.push(0);
    for field in fields {
        // Frames are at most a few MiB: a field never reaches 4 GiB, but saturate anyway.
        let n = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// Encodes fresh random bytes as a nonce.
pub fn encode_nonce(bytes: &[u8; NONCE_BYTES]) -> String {
    STANDARD.encode(bytes)
}

/// Whether `nonce` is standard base64 of exactly [`NONCE_BYTES`] bytes.
pub fn is_valid_nonce(nonce: &str) -> bool {
    // 32 bytes are 44 base64 characters; refuse anything longer before decoding.
    nonce.len() == 44 && STANDARD.decode(nonce).is_ok_and(|b| b.len() == NONCE_BYTES)
}

/// Standard base64 of a signature or key.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64 (a signature or key from a frame); `None` if it is not.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_context_nul_and_length_prefixed_fields() {
        let m = welcome_message("n", "edge-01", "s1");
        let mut expected = b"agentmesh-welcome-v1\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 1, b'n']);
        expected.extend_from_slice(&[0, 0, 0, 7]);
        expected.extend_from_slice(b"edge-01");
        expected.extend_from_slice(&[0, 0, 0, 2, b's', b'1']);
        assert_eq!(m, expected);
    }

    #[test]
    fn contexts_and_field_boundaries_are_unambiguous() {
        assert_ne!(
            welcome_message("a", "b", "c"),
            challenge_message("a", "b", "c")
        );
        assert_ne!(
            welcome_message("ab", "", "c"),
            welcome_message("a", "b", "c")
        );
    }

    #[test]
    fn nonces() {
        let n = encode_nonce(&[7u8; NONCE_BYTES]);
        assert!(is_valid_nonce(&n));
        assert!(!is_valid_nonce(&encode(&[7u8; 31])));
        assert!(!is_valid_nonce(&encode(&[7u8; 33])));
        assert!(!is_valid_nonce(
            "not base64 at all, but forty-four chars long"
        ));
        assert!(!is_valid_nonce(""));
    }
}
