//! WebSocket close codes used between hub and agent (`docs/protocol.md`, "Close codes").

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// The peer is going away (graceful shutdown).
pub const GOING_AWAY: u16 = 1001;
/// A message exceeded the configured size limit.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The peer is not authorised (pin not enrolled, id mismatch).
pub const UNAUTHORISED: u16 = 4001;
/// The peer broke the protocol (no `hello` in time, wrong version, bad frame).
pub const PROTOCOL_ERROR: u16 = 4002;
/// A newer session of the same identity replaced this one.
pub const SUPERSEDED: u16 = 4003;
/// The identity was revoked.
pub const REVOKED: u16 = 4004;

/// A short human name for a close code, for logs.
pub fn describe(code: u16) -> &'static str {
    match code {
        NORMAL => "normal",
        GOING_AWAY => "going away",
        MESSAGE_TOO_BIG => "message too big",
        UNAUTHORISED => "unauthorised",
        PROTOCOL_ERROR => "protocol error",
        SUPERSEDED => "superseded",
        REVOKED => "revoked",
        _ => "other",
    }
}
