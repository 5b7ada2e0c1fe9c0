//! Result signatures: the agent signs a digest of each result frame with its certificate key,
//! and the backend keeps digest, signature and public key in the `command_result` record.
//!
//! The signed message is the ASCII bytes of `agentmesh-result-v1:` followed by the digest in
//! lowercase hex; the signature is ECDSA P-256 with SHA-256, ASN.1 DER, in standard base64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
};
use serde_json::{Map, Value};

use crate::record::{canonical_json, is_hash_hex, sha256_hex};
use crate::AuditError;

/// Domain separation prefix of the signed message.
pub const RESULT_SIGNATURE_CONTEXT: &str = "agentmesh-result-v1:";

/// Hex SHA-256 over the canonical JSON of `result`, without a top-level `signature` key.
pub fn result_digest(result: &agentmesh_protocol::ResultFrame) -> String {
    // A plain struct of strings and numbers always serializes; Null keeps this total anyway.
    let mut value = serde_json::to_value(result).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("signature");
    }
    sha256_hex(canonical_json(&value).as_bytes())
}

/// A loaded signing key, for signing many results without re-parsing the key.
pub struct ResultSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for ResultSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResultSigner(***)")
    }
}

impl ResultSigner {
    /// From a PKCS#8 DER P-256 private key (`mesh_certs::p256_pkcs8_der_from_pem` also turns a
    /// SEC1 key into one).
    pub fn from_pkcs8_der(pkcs8_der: &[u8]) -> Result<ResultSigner, AuditError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8_der, &rng)
            .map_err(|e| AuditError::Crypto(format!("unusable P-256 private key: {e}")))?;
        Ok(ResultSigner { key, rng })
    }

    /// The base64 signature over `agentmesh-result-v1:<digest_hex>`.
    pub fn sign_digest(&self, digest_hex: &str) -> Result<String, AuditError> {
        let sig = self
            .key
            .sign(&self.rng, signed_message(digest_hex).as_bytes())
            .map_err(|e| AuditError::Crypto(format!("signing failed: {e}")))?;
        Ok(STANDARD.encode(sig.as_ref()))
    }
}

/// Signs `digest_hex` with a PKCS#8 DER P-256 key; base64 standard.
pub fn sign_result_digest(pkcs8_der: &[u8], digest_hex: &str) -> Result<String, AuditError> {
    ResultSigner::from_pkcs8_der(pkcs8_der)?.sign_digest(digest_hex)
}

/// Whether `signature_b64` is a valid signature of `digest_hex` by the key in `spki_der`.
pub fn verify_result_signature(spki_der: &[u8], digest_hex: &str, signature_b64: &str) -> bool {
    let Ok(point) = mesh_certs::ec_p256_point_from_spki(spki_der) else {
        return false;
    };
    let Ok(sig) = STANDARD.decode(signature_b64) else {
        return false;
    };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .verify(signed_message(digest_hex).as_bytes(), &sig)
        .is_ok()
}

fn signed_message(digest_hex: &str) -> String {
    format!("{RESULT_SIGNATURE_CONTEXT}{digest_hex}")
}

/// The signature fields of a `command_result` record's details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSignature {
    /// [`result_digest`] of the result, hex.
    pub result_sha256: String,
    /// Base64 signature over the digest.
    pub signature: String,
    /// Base64 of the agent's SubjectPublicKeyInfo DER.
    pub public_key: String,
    /// `mesh_certs::pin_from_spki_der` of that SPKI.
    pub agent_pin: String,
}

impl ResultSignature {
    /// The fields for a result signed by the key in `spki_der` (the agent certificate's SPKI,
    /// see [`crate::spki_der_from_cert_der`]). Does not check the signature: call
    /// [`ResultSignature::verify`] before trusting it.
    pub fn new(spki_der: &[u8], result_sha256: &str, signature_b64: &str) -> ResultSignature {
        ResultSignature {
            result_sha256: result_sha256.to_owned(),
            signature: signature_b64.to_owned(),
            public_key: STANDARD.encode(spki_der),
            agent_pin: mesh_certs::pin_from_spki_der(spki_der),
        }
    }

    /// Checks that the pin matches the public key and the signature matches the digest.
    pub fn verify(&self) -> Result<(), String> {
        if !is_hash_hex(&self.result_sha256) {
            return Err("result_sha256 is not 64 lowercase hex digits".into());
        }
        let spki = STANDARD
            .decode(&self.public_key)
            .map_err(|e| format!("public_key is not base64: {e}"))?;
        if mesh_certs::pin_from_spki_der(&spki) != self.agent_pin {
            return Err("agent_pin does not match public_key".into());
        }
        if !verify_result_signature(&spki, &self.result_sha256, &self.signature) {
            return Err("signature does not verify".into());
        }
        Ok(())
    }

    /// Reads the fields from `details`: `None` if it has no `signature` key, an error if it has
    /// one but the other fields are missing or not strings.
    pub fn from_details(details: &Value) -> Option<Result<ResultSignature, String>> {
        let map = details.as_object()?;
        map.get("signature")?;
        let field = |name: &str| -> Result<String, String> {
            map.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("signed record has no string `{name}`"))
        };
        Some((|| {
            Ok(ResultSignature {
                result_sha256: field("result_sha256")?,
                signature: field("signature")?,
                public_key: field("public_key")?,
                agent_pin: field("agent_pin")?,
            })
        })())
    }

    /// Adds the four fields to `details` (which should be an object; others are replaced).
    pub fn insert_into(&self, details: &mut Value) {
        if !details.is_object() {
            *details = Value::Object(Map::new());
        }
        if let Value::Object(map) = details {
            map.insert("result_sha256".into(), self.result_sha256.clone().into());
            map.insert("signature".into(), self.signature.clone().into());
            map.insert("public_key".into(), self.public_key.clone().into());
            map.insert("agent_pin".into(), self.agent_pin.clone().into());
        }
    }
}

/// `sha256:` + hex SHA-256 of `salt` followed by the UTF-8 bytes of `value`: how `secret`
/// params are recorded. Use a per-deployment secret salt so short values cannot be guessed.
pub fn salted_hash(salt: &[u8], value: &str) -> String {
    let mut bytes = Vec::with_capacity(salt.len() + value.len());
    bytes.extend_from_slice(salt);
    bytes.extend_from_slice(value.as_bytes());
    format!("sha256:{}", sha256_hex(&bytes))
}

/// Bytes of salt [`salted_secret`] callers should draw at random for each value.
pub const SECRET_SALT_BYTES: usize = 16;

/// `sha256:<salt hex>:<hash hex>`, the [`salted_hash`] of `value` with its own `salt` stored
/// beside it: equal secrets look different and a short one cannot be looked up in a table,
/// yet the record stays checkable with [`secret_matches`] by anyone who knows the value,
/// across restarts and on another machine. Draw `salt` at random for each value.
pub fn salted_secret(salt: &[u8], value: &str) -> String {
    let salted = salted_hash(salt, value);
    let hash = salted.strip_prefix("sha256:").unwrap_or(&salted);
    format!("sha256:{}:{hash}", crate::record::hex(salt))
}

/// Whether `recorded` (from [`salted_secret`]) is the record of `candidate`.
pub fn secret_matches(recorded: &str, candidate: &str) -> bool {
    let Some((salt_hex, _)) = recorded
        .strip_prefix("sha256:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return false;
    };
    if salt_hex.len() % 2 != 0 {
        return false;
    }
    let salt: Option<Vec<u8>> = (0..salt_hex.len())
        .step_by(2)
        .map(|i| {
            salt_hex
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    salt.is_some_and(|salt| salted_secret(&salt, candidate) == recorded)
}
