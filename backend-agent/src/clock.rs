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

/// Parses an RFC 3339 time (any offset).
pub fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &Rfc3339)
}

/// Unix milliseconds of an RFC 3339 time, or `None` when it does not parse (or is out of
/// range).
pub fn unix_ms_from_rfc3339(s: &str) -> Option<i64> {
    let t = parse_rfc3339(s).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_round_trips_through_rfc3339() {
        let ms = 1_764_432_000_123;
        assert_eq!(unix_ms_from_rfc3339(&rfc3339_from_unix_ms(ms)), Some(ms));
        assert_eq!(
            unix_ms_from_rfc3339("1970-01-01T01:00:00.5+01:00"),
            Some(500)
        );
        assert_eq!(unix_ms_from_rfc3339("yesterday"), None);
    }
}
