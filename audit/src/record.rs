//! Records and events, the canonical JSON form, and hashing.
//!
//! The canonical form of a JSON value is what `docs/audit.md` specifies: object keys sorted by
//! their UTF-8 bytes at every level, no whitespace, strings escaped exactly as serde_json
//! escapes them, numbers as serde_json prints them. A record's `hash` is the hex SHA-256 of the
//! canonical form of the record without its `hash` key, and each line on disk is the canonical
//! form of the whole record (with `hash`), so any changed byte is either a different value or a
//! non-canonical line.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::macros::format_description;
use time::OffsetDateTime;

/// `prev` of the very first record: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The record kinds agentmesh writes (`kind` is a free string; these are the known ones).
pub mod kinds {
    /// An operator asked for a command (durable before dispatch).
    pub const COMMAND_REQUESTED: &str = "command_requested";
    /// The hub sent the command to the agent.
    pub const COMMAND_DISPATCHED: &str = "command_dispatched";
    /// A command finished; carries the agent's result signature when there is one.
    pub const COMMAND_RESULT: &str = "command_result";
    /// A request was refused by a rate limit.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// A credential was missing or wrong.
    pub const AUTH_FAILED: &str = "auth_failed";
    /// A valid credential was used outside its scope.
    pub const FORBIDDEN: &str = "forbidden";
    /// An agent completed the handshake.
    pub const AGENT_CONNECTED: &str = "agent_connected";
    /// An agent was refused at the handshake.
    pub const AGENT_REJECTED: &str = "agent_rejected";
    /// An agent's session ended.
    pub const AGENT_DISCONNECTED: &str = "agent_disconnected";
    /// An agent pin was enrolled.
    pub const ENROLLED: &str = "enrolled";
    /// An agent was revoked.
    pub const REVOKED: &str = "revoked";
    /// A token was used for the first time in this process.
    pub const TOKEN_USED: &str = "token_used";
    /// Written by the log itself: a torn tail was cut at open.
    pub const LOG_REPAIRED: &str = "log_repaired";
    /// Written by the log itself: first record of a file started by rotation.
    pub const LOG_ROTATED: &str = "log_rotated";
    /// Written by the log itself: writes failed for a while (a full disk) and work again; says
    /// since when, why, and how many appends were refused or dropped meanwhile.
    pub const LOG_RESUMED: &str = "log_resumed";
    /// Written by the backend at start: the log ends before the latest signed checkpoint, so
    /// records the checkpoint vouches for are missing (see `docs/audit.md`, "Anchored tail").
    pub const AUDIT_TAIL_MISSING: &str = "audit_tail_missing";
}

/// What a caller appends; the writer adds `seq`, `ts`, `prev` and `hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Record kind, see [`kinds`].
    pub kind: String,
    /// Who acted (operator token name, `admin`, ...), if anyone.
    pub actor: Option<String>,
    /// The agent concerned, if any.
    pub agent_id: Option<String>,
    /// The command concerned, if any.
    pub command_id: Option<String>,
    /// Free-form details; always stored as a JSON object (see [`AuditEvent::details`]).
    pub details: Value,
}

impl AuditEvent {
    /// An event of `kind` with no actor, agent or command and empty details.
    pub fn new(kind: impl Into<String>) -> AuditEvent {
        AuditEvent {
            kind: kind.into(),
            actor: None,
            agent_id: None,
            command_id: None,
            details: Value::Object(Map::new()),
        }
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: impl Into<String>) -> AuditEvent {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the agent id.
    pub fn agent(mut self, agent_id: impl Into<String>) -> AuditEvent {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// Sets the command id.
    pub fn command(mut self, command_id: impl Into<String>) -> AuditEvent {
        self.command_id = Some(command_id.into());
        self
    }

    /// Sets the details. `null` becomes `{}`; any other non-object `v` becomes `{"value": v}`,
    /// so `details` is always an object.
    pub fn details(mut self, details: Value) -> AuditEvent {
        self.details = match details {
            Value::Object(map) => Value::Object(map),
            Value::Null => Value::Object(Map::new()),
            other => {
                let mut map = Map::new();
                map.insert("value".into(), other);
                Value::Object(map)
            }
        };
        self
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, continuing across rotated files.
    pub seq: u64,
    /// When the writer assigned `seq`: RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// Record kind, see [`kinds`].
    pub kind: String,
    /// Who acted, if anyone.
    #[serde(default)]
    pub actor: Option<String>,
    /// The agent concerned, if any.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The command concerned, if any.
    #[serde(default)]
    pub command_id: Option<String>,
    /// Free-form details (a JSON object).
    pub details: Value,
    /// `hash` of the previous record; [`GENESIS_PREV`] for seq 1.
    pub prev: String,
    /// Hex SHA-256 of this record's canonical form without `hash`.
    pub hash: String,
}

impl AuditRecord {
    /// Builds record `seq` after `prev` from `event`, stamping `ts` and computing `hash`.
    pub(crate) fn seal(event: AuditEvent, seq: u64, ts: String, prev: String) -> AuditRecord {
        let mut record = AuditRecord {
            seq,
            ts,
            kind: event.kind,
            actor: event.actor,
            agent_id: event.agent_id,
            command_id: event.command_id,
            details: event.details,
            prev,
            hash: String::new(),
        };
        record.hash = sha256_hex(canonical_json(&record.body()).as_bytes());
        record
    }

    /// `event` stamped `ts`, not yet placed in the chain: [`AuditRecord::relink`] gives it its
    /// `seq`, `prev` and `hash` when it is written.
    pub(crate) fn unsealed(event: AuditEvent, ts: String) -> AuditRecord {
        AuditRecord {
            seq: 0,
            ts,
            kind: event.kind,
            actor: event.actor,
            agent_id: event.agent_id,
            command_id: event.command_id,
            details: event.details,
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// Moves the record to position `seq` after `prev` (used when rotation intervenes).
    pub(crate) fn relink(&mut self, seq: u64, prev: String) {
        self.seq = seq;
        self.prev = prev;
        self.hash = sha256_hex(canonical_json(&self.body()).as_bytes());
    }

    /// The record as a JSON object without `hash`: what the hash covers.
    pub fn body(&self) -> Value {
        let mut map = Map::new();
        map.insert("seq".into(), Value::from(self.seq));
        map.insert("ts".into(), Value::from(self.ts.clone()));
        map.insert("kind".into(), Value::from(self.kind.clone()));
        map.insert("actor".into(), opt(&self.actor));
        map.insert("agent_id".into(), opt(&self.agent_id));
        map.insert("command_id".into(), opt(&self.command_id));
        map.insert("details".into(), self.details.clone());
        map.insert("prev".into(), Value::from(self.prev.clone()));
        Value::Object(map)
    }

    /// The line written to disk: the canonical form of the whole record plus `\n`.
    pub fn to_line(&self) -> String {
        let mut value = self.body();
        if let Value::Object(map) = &mut value {
            map.insert("hash".into(), Value::from(self.hash.clone()));
        }
        let mut line = canonical_json(&value);
        line.push('\n');
        line
    }
}

fn opt(value: &Option<String>) -> Value {
    value.clone().map_or(Value::Null, Value::String)
}

/// The canonical form of `value` (see the module docs).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted here rather than relying on Map's order: a `preserve_order` feature
            // enabled anywhere in the build would otherwise change every hash.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string exactly as serde_json writes it: `"` `\` and control characters escaped
/// (`\b \f \n \r \t` short, the rest `\u00xx` lowercase), everything else verbatim.
fn write_string(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let b = c as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Whether `s` is 64 lowercase hex digits, the shape of every hash in the log.
pub(crate) fn is_hash_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Now, as the log writes it: RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub(crate) fn now_ts() -> String {
    format_ts(OffsetDateTime::now_utc())
}

fn format_ts(t: OffsetDateTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_escape_like_serde_json() {
        let mut s: String = (0u32..0x80).filter_map(char::from_u32).collect();
        s.push_str("é€😀\u{2028}\u{7f}");
        let mut ours = String::new();
        write_string(&s, &mut ours);
        assert_eq!(ours, serde_json::to_string(&s).unwrap());
    }

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"z": [true, null, {"y": 1.5, "x": "q"}], "m": -3}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"m":-3,"z":[true,null,{"x":"q","y":1.5}]},"b":1}"#
        );
    }

    #[test]
    fn details_are_always_objects() {
        assert_eq!(AuditEvent::new("k").details(Value::Null).details, json!({}));
        assert_eq!(
            AuditEvent::new("k").details(json!(3)).details,
            json!({"value": 3})
        );
    }

    #[test]
    fn worked_example_from_docs() {
        // Keep in sync with docs/audit.md, "Worked example".
        let event = AuditEvent::new(kinds::COMMAND_REQUESTED)
            .actor("alice")
            .agent("web-01")
            .command("c-1")
            .details(json!({"verb": "ping", "params": {}}));
        let record = AuditRecord::seal(
            event,
            1,
            "2025-01-31T12:00:00.123Z".into(),
            GENESIS_PREV.into(),
        );
        assert_eq!(
            canonical_json(&record.body()),
            format!(
                "{{\"actor\":\"alice\",\"agent_id\":\"web-01\",\"command_id\":\"c-1\",\
                 \"details\":{{\"params\":{{}},\"verb\":\"ping\"}},\"kind\":\"command_requested\",\
                 \"prev\":\"{GENESIS_PREV}\",\"seq\":1,\"ts\":\"2025-01-31T12:00:00.123Z\"}}"
            )
        );
        println!("{}", record.to_line());
        assert_eq!(record.hash, WORKED_EXAMPLE_HASH);
    }

    const WORKED_EXAMPLE_HASH: &str =
        "1334215c9ad30c34cdf09346387122e6277ac3106d2d264515b1eb82a8096d46";

    #[test]
    fn timestamps_have_milliseconds() {
        let t = time::macros::datetime!(2025-01-31 12:00:00.123456 UTC);
        assert_eq!(format_ts(t), "2025-01-31T12:00:00.123Z");
        assert_eq!(now_ts().len(), 24);
    }
}
