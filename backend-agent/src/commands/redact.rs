//! Secret parameters never reach the store or the audit log in clear: they are replaced by
//! `"sha256:<salt hex>:<hash hex>"`, the [`agentmesh_audit::salted_hash`] of the value with a
//! fresh random salt stored next to it. The salt makes equal secrets look different and
//! keeps a short value from being looked up in a table; storing it keeps the hash checkable
//! after a restart ([`verify_secret`]).

use agentmesh_protocol::VerbSpec;
use serde_json::{Map, Value};

/// Bytes of random salt per hashed value.
pub const SALT_BYTES: usize = 16;

/// `args` with every `secret` parameter replaced by its salted hash.
pub fn redact_args(spec: &VerbSpec, args: &Map<String, Value>) -> Value {
    let mut out = Map::with_capacity(args.len());
    for (name, value) in args {
        let secret = spec.params.get(name).is_some_and(|p| p.secret);
        let shown = if secret {
            let salt: [u8; SALT_BYTES] = rand::random();
            Value::String(hash_with_salt(&salt, value))
        } else {
            value.clone()
        };
        out.insert(name.clone(), shown);
    }
    Value::Object(out)
}

fn hash_with_salt(salt: &[u8], value: &Value) -> String {
    let argv = agentmesh_protocol::verbs::arg_to_argv(value);
    let salted = agentmesh_audit::salted_hash(salt, &argv);
    let hash = salted.strip_prefix("sha256:").unwrap_or(&salted);
    format!("sha256:{}:{hash}", crate::hex::encode(salt))
}

/// Whether `recorded` (`"sha256:<salt>:<hash>"`) is the hash of `candidate`.
pub fn verify_secret(recorded: &str, candidate: &Value) -> bool {
    let Some((salt_hex, _)) = recorded
        .strip_prefix("sha256:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return false;
    };
    match crate::hex::decode(salt_hex) {
        Some(salt) => hash_with_salt(&salt, candidate) == recorded,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_hashed_with_their_own_salt_and_stay_verifiable() {
        let spec: VerbSpec = serde_json::from_value(json!({
            "name": "v", "params": {
                "user": {"type": "string"},
                "password": {"type": "string", "secret": true}
            }
        }))
        .unwrap();
        let args = json!({"user": "alice", "password": "hunter2"});
        let red = redact_args(&spec, args.as_object().unwrap());
        assert_eq!(red["user"], "alice");
        let p = red["password"].as_str().unwrap();
        assert!(p.starts_with("sha256:") && !p.contains("hunter2"));
        // Verifiable without any process state (as after a restart).
        assert!(verify_secret(p, &json!("hunter2")));
        assert!(!verify_secret(p, &json!("hunter3")));
        // The same secret twice gets two different records.
        let again = redact_args(&spec, args.as_object().unwrap());
        assert_ne!(again["password"], red["password"]);
    }
}
