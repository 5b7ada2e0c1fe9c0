//! Wall-clock helpers: RFC 3339 timestamps and Unix milliseconds.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now as RFC 3339 (UTC, millisecond precision).
pub fn now_rfc3339() -> String {
    rfc3339_from_unix_ms(unix_ms())
}

/// Now in Unix milliseconds.
pub fn unix_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Unix milliseconds as RFC 3339 (UTC).
pub fn rfc3339_from_unix_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.format(&Rfc3339).unwrap_or_default()
}
