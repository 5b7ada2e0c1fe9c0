//! Operator bearer tokens: roles, lookup by SHA-256 in constant time, and token minting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::TokenConfig;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read agents, commands and audit.
    Viewer,
    /// Also run commands (optionally scoped to verbs and labels).
    Operator,
    /// Also enrol, revoke and issue join tokens.
    Admin,
}

impl Role {
    /// The config name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller of the API.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's configured name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Verbs it may run, and (for any role) whose commands and records it may read
    /// (`*` = all). Ignored for admins.
    pub verbs: Vec<String>,
    /// Labels an agent must carry (its authoritative labels) to be targeted or read about.
    /// Ignored for admins.
    pub labels: BTreeMap<String, String>,
}

impl Principal {
    /// Whether the token's verb scope includes `verb`.
    pub fn allows_verb(&self, verb: &str) -> bool {
        self.role == Role::Admin || self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    /// Whether an agent with these (authoritative) labels is inside the token's label scope.
    pub fn allows_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.role == Role::Admin || self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Whether the token has no verb or label restriction (admins never have one).
    pub fn is_unscoped(&self) -> bool {
        self.role == Role::Admin || (self.labels.is_empty() && self.verbs.iter().any(|v| v == "*"))
    }
}

struct TokenEntry {
    digest: [u8; 32],
    principal: Principal,
}

/// The configured tokens, held only as SHA-256 digests. A reload swaps the whole set at once
/// ([`TokenStore::replace`]); a request sees either the old set or the new one.
pub struct TokenStore {
    entries: std::sync::RwLock<std::sync::Arc<Vec<TokenEntry>>>,
}

impl TokenStore {
    /// Builds the store from `[[tokens]]` (already validated as 64 hex digits).
    pub fn new(tokens: &[TokenConfig]) -> Self {
        TokenStore {
            entries: std::sync::RwLock::new(std::sync::Arc::new(entries_of(tokens))),
        }
    }

    /// Replaces every token with `tokens` (config reload).
    pub fn replace(&self, tokens: &[TokenConfig]) {
        let fresh = std::sync::Arc::new(entries_of(tokens));
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> std::sync::Arc<Vec<TokenEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Finds the principal for a presented token. Every entry is compared in constant time,
    /// so the answer's timing says nothing about which digest bytes matched.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let entries = self.current();
        let mut found = None;
        for entry in entries.iter() {
            if constant_time_eq(&entry.digest, &digest) && found.is_none() {
                found = Some(&entry.principal);
            }
        }
        found.cloned()
    }
}

fn entries_of(tokens: &[TokenConfig]) -> Vec<TokenEntry> {
    tokens
        .iter()
        .filter_map(|t| {
            Some(TokenEntry {
                digest: decode_hex32(&t.sha256)?,
                principal: Principal {
                    name: t.name.clone(),
                    role: t.role,
                    verbs: t.verbs.clone(),
                    labels: t.labels.clone(),
                },
            })
        })
        .collect()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    crate::hex::decode(hex)?.try_into().ok()
}

/// Lower-case hex SHA-256 of a token, as `[[tokens]].sha256` wants it.
pub fn token_sha256_hex(token: &str) -> String {
    crate::hex::encode(&Sha256::digest(token.as_bytes()))
}

/// Mints a fresh random token (`amt_` + 43 base64url chars, 256 bits).
pub fn new_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "amt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The config lines that enable a token.
pub fn token_config_snippet(name: &str, role: Role, token: &str) -> String {
    format!(
        "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{}\"\n",
        token_sha256_hex(token),
        role.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_authenticates_by_its_hash_only() {
        let token = new_token();
        let store = TokenStore::new(&[TokenConfig {
            name: "ops".into(),
            sha256: token_sha256_hex(&token),
            role: Role::Operator,
            verbs: vec!["*".into()],
            labels: BTreeMap::new(),
        }]);
        assert_eq!(
            store.authenticate(&token).map(|p| p.name),
            Some("ops".into())
        );
        assert!(store.authenticate("amt_wrong").is_none());
        assert!(store.authenticate(&token_sha256_hex(&token)).is_none());
        store.replace(&[]);
        assert!(store.authenticate(&token).is_none(), "a reload removes it");
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }
}
