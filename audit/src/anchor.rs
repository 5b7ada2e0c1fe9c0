//! Anchoring the tail: signed [`Checkpoint`]s of where the chain stood, kept away from the log,
//! and [`verify_anchored`], which checks that the log still reaches the latest one.
//!
//! A hash chain shows changes, deletions and reordering, but not records cut off the end: the
//! shorter log is a valid chain. The backend therefore records `(seq, hash)` of its chain at
//! least every second in its store, signed with the hub's key. A log that ends before the
//! checkpoint, or holds a different record at its seq, was cut (`docs/audit.md`).
//!
//! The signed message is the ASCII text
//! `agentmesh-audit-checkpoint-v1\n<seq>\n<hash>\n<ts>\n<file>`; the signature is ECDSA P-256
//! with SHA-256, ASN.1 DER, in standard base64; `public_key` is the signer's SubjectPublicKeyInfo
//! DER in standard base64 and `key_pin` its `mesh_certs` pin.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::{is_hash_hex, kinds};
use crate::verify::{check_record, verify_files_visiting};
use crate::{log_files, AuditError, VerifyError, VerifySummary};

/// Domain separation: the first line of the signed message.
pub const CHECKPOINT_CONTEXT: &str = "agentmesh-audit-checkpoint-v1";

/// The fixed DER prefix of a P-256 SubjectPublicKeyInfo (RFC 5480): the algorithm
/// identifiers and the BIT STRING header; the 65-byte uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A signed statement: the log's chain reached record `seq`, whose hash is `hash`, at `ts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Seq of the last record written when the checkpoint was taken.
    pub seq: u64,
    /// That record's `hash`.
    pub hash: String,
    /// When the checkpoint was taken (RFC 3339 UTC).
    pub ts: String,
    /// The log's current file (informational: records may since have rotated away).
    pub file: String,
    /// Base64 SubjectPublicKeyInfo DER of the signing key.
    pub public_key: String,
    /// `mesh_certs::pin_from_spki_der` of that key.
    pub key_pin: String,
    /// Base64 ECDSA P-256 SHA-256 signature over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The signed message for these fields.
    pub fn message(seq: u64, hash: &str, ts: &str, file: &str) -> String {
        format!("{CHECKPOINT_CONTEXT}\n{seq}\n{hash}\n{ts}\n{file}")
    }

    /// Checks the pin against the key and the signature against the fields.
    pub fn verify_signature(&self) -> Result<(), String> {
        if !is_hash_hex(&self.hash) {
            return Err("hash is not 64 lowercase hex digits".into());
        }
        let spki = STANDARD
            .decode(&self.public_key)
            .map_err(|e| format!("public_key is not base64: {e}"))?;
        if mesh_certs::pin_from_spki_der(&spki) != self.key_pin {
            return Err("key_pin does not match public_key".into());
        }
        let point = spki
            .strip_prefix(&P256_SPKI_PREFIX[..])
            .ok_or("public_key is not a P-256 key")?;
        let sig = STANDARD
            .decode(&self.signature)
            .map_err(|e| format!("signature is not base64: {e}"))?;
        let message = Checkpoint::message(self.seq, &self.hash, &self.ts, &self.file);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(message.as_bytes(), &sig)
            .map_err(|_| "signature does not verify".to_owned())
    }
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checkpoint seq {} hash {} at {} (file {})",
            self.seq, self.hash, self.ts, self.file
        )
    }
}

/// Signs checkpoints with a P-256 key (the hub's TLS key).
pub struct CheckpointSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    spki: Vec<u8>,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointSigner(***)")
    }
}

impl CheckpointSigner {
    /// From a PKCS#8 DER P-256 private key (`mesh_certs::private_key_der_from_pem`).
    pub fn from_pkcs8_der(pkcs8_der: &[u8]) -> Result<CheckpointSigner, AuditError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8_der, &rng)
            .map_err(|e| AuditError::Crypto(format!("not a usable P-256 PKCS#8 key: {e}")))?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_ref());
        Ok(CheckpointSigner { key, rng, spki })
    }

    /// The pin of the signing key, as stored in each checkpoint.
    pub fn key_pin(&self) -> String {
        mesh_certs::pin_from_spki_der(&self.spki)
    }

    /// A signed checkpoint for record `seq` with `hash`, taken at `ts`, in `file`.
    pub fn sign(
        &self,
        seq: u64,
        hash: &str,
        ts: &str,
        file: &str,
    ) -> Result<Checkpoint, AuditError> {
        let message = Checkpoint::message(seq, hash, ts, file);
        let sig = self
            .key
            .sign(&self.rng, message.as_bytes())
            .map_err(|e| AuditError::Crypto(format!("signing failed: {e}")))?;
        Ok(Checkpoint {
            seq,
            hash: hash.to_owned(),
            ts: ts.to_owned(),
            file: file.to_owned(),
            public_key: STANDARD.encode(&self.spki),
            key_pin: self.key_pin(),
            signature: STANDARD.encode(sig.as_ref()),
        })
    }
}

/// Why an anchored verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// The files could not be listed.
    #[error("cannot list the log files: {0}")]
    Files(String),
    /// The chain itself is broken.
    #[error("{0}")]
    Broken(VerifyError),
    /// The checkpoint is not validly signed, or not by the expected key.
    #[error("{checkpoint}: {reason}")]
    BadCheckpoint {
        /// The checkpoint.
        checkpoint: Box<Checkpoint>,
        /// What is wrong with it.
        reason: String,
    },
    /// The log ends before the checkpoint: records were cut off the end.
    #[error("the log ends at seq {last_seq} but {checkpoint} vouches for more: records were cut off the end")]
    Cut {
        /// The checkpoint.
        checkpoint: Box<Checkpoint>,
        /// The log's last seq.
        last_seq: u64,
    },
    /// The record at the checkpoint's seq is not the one the checkpoint names.
    #[error("record seq {} has hash {found} but {checkpoint} names another: the tail was cut and rewritten", checkpoint.seq)]
    Rewritten {
        /// The checkpoint.
        checkpoint: Box<Checkpoint>,
        /// The hash the log has at that seq.
        found: String,
    },
    /// The backend found the log shorter than a checkpoint at an earlier start and recorded
    /// it (`audit_tail_missing`): records that checkpoint vouched for are gone.
    #[error("record seq {seq}: at start the backend found records missing that a checkpoint vouched for: {details}")]
    TailLost {
        /// Seq of the `audit_tail_missing` record.
        seq: u64,
        /// Its details.
        details: String,
    },
}

/// Verifies every file of the log at `path` (rotated files and the current one) and that the
/// chain reaches `checkpoint`: a record with its seq exists and has its hash, and its signature
/// verifies with a key whose pin is `expected_pin` (when given). Also fails on an
/// `audit_tail_missing` record: a cut found and recorded at an earlier start.
pub fn verify_anchored(
    path: &Path,
    checkpoint: &Checkpoint,
    expected_pin: Option<&str>,
) -> Result<VerifySummary, AnchorError> {
    let bad = |reason: String| AnchorError::BadCheckpoint {
        checkpoint: Box::new(checkpoint.clone()),
        reason,
    };
    checkpoint.verify_signature().map_err(bad)?;
    if let Some(pin) = expected_pin {
        if pin != checkpoint.key_pin {
            return Err(bad(format!(
                "signed by key {} but the hub key is {pin}",
                checkpoint.key_pin
            )));
        }
    }
    let files = log_files(path).map_err(|e| AnchorError::Files(e.to_string()))?;
    let mut at_checkpoint = None;
    let mut lost = None;
    let summary = verify_files_visiting(&files, &mut |line, body: &Value| {
        if line.seq == checkpoint.seq {
            at_checkpoint = Some(line.hash.clone());
        }
        if line.kind == kinds::AUDIT_TAIL_MISSING && lost.is_none() {
            let details = body
                .get("details")
                .map(Value::to_string)
                .unwrap_or_default();
            lost = Some((line.seq, details));
        }
    })
    .map_err(AnchorError::Broken)?;
    if let Some((seq, details)) = lost {
        return Err(AnchorError::TailLost { seq, details });
    }
    match at_checkpoint {
        Some(found) if found == checkpoint.hash => Ok(summary),
        Some(found) => Err(AnchorError::Rewritten {
            checkpoint: Box::new(checkpoint.clone()),
            found,
        }),
        None if summary.last_seq < checkpoint.seq => Err(AnchorError::Cut {
            checkpoint: Box::new(checkpoint.clone()),
            last_seq: summary.last_seq,
        }),
        // The seq lies before the first file still present (older files were deleted):
        // the checkpoint cannot be checked, and it does not vouch for the tail either.
        None => Err(bad(format!(
            "seq {} is not in the log (it starts at seq {})",
            checkpoint.seq, summary.first_seq
        ))),
    }
}

/// The hash of the record with `seq` in the log at `path`, reading only the file whose range
/// holds it; `None` if no well-formed record has that seq. Each line is checked on its own, not
/// as a chain, so damage elsewhere does not hide the record. For the check at start.
pub fn find_record(path: &Path, seq: u64) -> Result<Option<String>, AuditError> {
    for file in log_files(path)? {
        if let Some((first, last)) = crate::files::rotated_range(path, &file) {
            if seq < first || seq > last {
                continue;
            }
        }
        let reader = std::fs::File::open(&file)
            .map(std::io::BufReader::new)
            .map_err(|e| AuditError::io(format!("open {}", file.display()), e))?;
        for line in std::io::BufRead::split(reader, b'\n') {
            let line = line.map_err(|e| AuditError::io(format!("read {}", file.display()), e))?;
            if let Ok((checked, _)) = check_record(&line) {
                if checked.seq == seq {
                    return Ok(Some(checked.hash));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued() -> mesh_certs::Issued {
        mesh_certs::Ca::generate("t")
            .and_then(|ca| {
                ca.issue_server("hub", &["localhost".into()], mesh_certs::Validity::days(1))
            })
            .expect("issue")
    }

    fn signer_of(issued: &mesh_certs::Issued) -> CheckpointSigner {
        let der = mesh_certs::private_key_der_from_pem(&issued.key_pem).expect("key");
        CheckpointSigner::from_pkcs8_der(&der).expect("signer")
    }

    fn signer() -> CheckpointSigner {
        signer_of(&issued())
    }

    #[test]
    fn the_key_pin_is_the_hub_certificate_pin() {
        let issued = issued();
        let pin = mesh_certs::pin_from_pem(&issued.cert_pem).expect("pin");
        assert_eq!(signer_of(&issued).key_pin(), pin);
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_any_changed_field_does_not() {
        let s = signer();
        let hash = "ab".repeat(32);
        let cp = s
            .sign(7, &hash, "2026-01-01T00:00:00.000Z", "audit.jsonl")
            .expect("sign");
        cp.verify_signature().expect("verifies");
        let mut other = cp.clone();
        other.seq = 6;
        assert!(other.verify_signature().is_err());
        let mut other = cp.clone();
        other.key_pin = signer().key_pin();
        assert!(other.verify_signature().is_err());
        let mut other = cp;
        let forged = signer()
            .sign(7, &hash, &other.ts, &other.file)
            .expect("sign");
        other.signature = forged.signature;
        assert!(other.verify_signature().is_err());
    }
}
