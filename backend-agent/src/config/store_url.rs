//! `[store] url`: the PostgreSQL connection URL, a secret (it may carry a password), so its
//! `Debug` and `Display` never show the password.

use std::fmt;

use serde::Deserialize;

/// Default `[store] pool_size`: connections a backend keeps open to PostgreSQL at most.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// Largest `[store] pool_size` accepted (PostgreSQL's default `max_connections` is 100).
pub const MAX_POOL_SIZE: usize = 64;

/// A `postgres://user:password@host:port/database?options` URL. Cloning is cheap enough (a
/// `String`); printing it hides the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps `url` (checked by [`DatabaseUrl::check`], not here).
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The full URL, password included: only for handing to the driver.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// Why the URL cannot be used, or `Ok`: a `postgres://` or `postgresql://` URL the
    /// driver parses. The message never contains the password.
    pub fn check(&self) -> Result<(), String> {
        if !(self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")) {
            return Err(format!(
                "{:?}: must start with postgres:// (unset it for the embedded SQLite store)",
                self.redacted()
            ));
        }
        self.0
            .parse::<postgres::Config>()
            .map(|_| ())
            .map_err(|e| format!("{:?}: {e}", self.redacted()))
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`; a `password=` query
/// parameter is hidden too.
fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let from = rest_start + colon + 1;
                out.replace_range(from..rest_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_prints() {
        for (url, shown) in [
            (
                "postgres://am:s3cret@db:5432/mesh",
                "postgres://am:***@db:5432/mesh",
            ),
            ("postgres://am@db/mesh", "postgres://am@db/mesh"),
            (
                "postgresql://am:p@ss:w@db?sslmode=disable",
                "postgresql://am:***@db?sslmode=disable",
            ),
            (
                "postgres://db/mesh?user=am&password=s3cret",
                "postgres://db/mesh?user=am&password=***",
            ),
        ] {
            let u = DatabaseUrl::new(url);
            assert_eq!(u.redacted(), shown);
            assert_eq!(format!("{u:?}"), shown);
            assert_eq!(u.to_string(), shown);
        }
    }

    #[test]
    fn only_postgres_urls_pass() {
        assert!(DatabaseUrl::new("postgres://am@127.0.0.1:5432/mesh")
            .check()
            .is_ok());
        let err = DatabaseUrl::new("mysql://am:s3cret@db/mesh")
            .check()
            .unwrap_err();
        assert!(
            err.contains("postgres://") && !err.contains("s3cret"),
            "{err}"
        );
    }
}
