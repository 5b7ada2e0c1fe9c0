#![forbid(unsafe_code)]
//! X.509 for agentmesh: the mesh CA, agent and server certificates, and SPKI pins.
//!
//! Every agent and the hub carry a certificate issued by one mesh CA. An agent's id is its
//! certificate's subject CN ([`validate_agent_id`] says what an id may look like), and peers are
//! additionally pinned by the SHA-256 of their SubjectPublicKeyInfo, written
//! `sha256//<base64>` exactly as `curl --pinnedpubkey` expects (README, "Identity and pins").
//!
//! Keys are ECDSA P-256, stored as PKCS#8 PEM with mode 0600. The `mesh-certs` binary is a thin
//! command-line front end over this library.
//!
//! ```no_run
//! # fn main() -> mesh_certs::Result<()> {
//! use mesh_certs::{Ca, Validity};
//! let ca = Ca::generate("agentmesh CA")?;
//! let agent = ca.issue_agent("web-01", Validity::default())?;
//! assert_eq!(mesh_certs::pin_from_pem(&agent.cert_pem)?, agent.pin);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `error`: [`Error`], the one error type, and [`Result`].
//! - `ca`: [`Ca`]: generate, load, save, issue agent and server certificates.
//! - `csr`: [`generate_csr`] and [`Ca::sign_agent_csr`], for enrolment without moving keys.
//! - `issued`: [`Validity`] and [`Issued`], what issuance takes and returns.
//! - `pin`: SPKI pins from DER or PEM.
//! - `pem`: PEM decoding (rustls-pki-types) and encoding; private keys in every form rustls
//!   loads, and SEC1 to PKCS#8 for signing.
//! - `x509`: parsing helpers, [`common_name_from_cert_der`], [`spki_der_from_cert_der`] and
//!   [`ec_p256_point_from_spki`]: the only X.509/DER walking in agentmesh.
//! - `inspect`: [`CertInfo`] for `mesh-certs inspect`.
//! - `files`: [`write_private`] and directory-level helpers used by the CLI.
//! - `id`: [`validate_agent_id`].
//! - `cli` (binary only, `src/cli.rs`): the `mesh-certs` commands.

mod ca;
mod csr;
mod error;
mod files;
mod id;
mod inspect;
mod issued;
mod pem;
mod pin;
mod x509;

#[cfg(test)]
mod tests;

pub use ca::{Ca, CA_VALIDITY_DAYS};
pub use csr::{check_agent_csr, generate_csr};
pub use error::{Error, Result};
pub use files::{init_ca_dir, issue_agent_to_dir, issue_server_to_dir, write_private};
pub use id::{validate_agent_id, MAX_AGENT_ID_LEN};
pub use inspect::{inspect_der, inspect_pem, CertInfo, CertStatus};
pub use issued::{Issued, Validity, DEFAULT_LEAF_DAYS};
pub use pem::{
    certs_der_from_pem, p256_pkcs8_der_from_pem, private_key_der_from_pem, private_key_from_pem,
};
pub use pin::{is_valid_pin, pin_from_cert_der, pin_from_pem, pin_from_spki_der, PIN_PREFIX};
pub use x509::{common_name_from_cert_der, ec_p256_point_from_spki, spki_der_from_cert_der};

/// CA certificate file name, in a CA directory and beside every issued certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file name.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Issued certificate file name.
pub const CERT_FILE: &str = "cert.pem";
/// Issued private key file name.
pub const KEY_FILE: &str = "key.pem";
