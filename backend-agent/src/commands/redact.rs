//! Secret parameters never reach the store or the audit log in clear: they are replaced by a
//! salted SHA-256 (`"sha256:<hex>"`), enough to prove later which value was sent.

use agentmesh_protocol::VerbSpec;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A per-process random salt for secret hashes.
#[derive(Clone)]
pub struct Salt([u8; 16]);

impl Salt {
    /// A fresh random salt.
    pub fn random() -> Self {
        Salt(rand::random())
    }
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(***)")
    }
}

/// `args` with every `secret` parameter replaced by its salted hash.
pub fn redact_args(spec: &VerbSpec, args: &Map<String, Value>, salt: &Salt) -> Value {
    let mut out = Map::with_capacity(args.len());
    for (name, value) in args {
        let secret = spec.params.get(name).is_some_and(|p| p.secret);
        let shown = if secret {
            let mut h = Sha256::new();
            h.update(salt.0);
            h.update(agentmesh_protocol::verbs::arg_to_argv(value).as_bytes());
            let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            Value::String(format!("sha256:{hex}"))
        } else {
            value.clone()
        };
        out.insert(name.clone(), shown);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_hashed_and_others_kept() {
        let spec: VerbSpec = serde_json::from_value(json!({
            "name": "v", "params": {
                "user": {"type": "string"},
                "password": {"type": "string", "secret": true}
            }
        }))
        .unwrap();
        let args = json!({"user": "alice", "password": "hunter2"});
        let red = redact_args(&spec, args.as_object().unwrap(), &Salt::random());
        assert_eq!(red["user"], "alice");
        let p = red["password"].as_str().unwrap();
        assert!(p.starts_with("sha256:") && !p.contains("hunter2"));
    }
}
