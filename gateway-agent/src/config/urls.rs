//! `[outbound] backend_url` as one URL or a list of hub URLs (several replicas without a
//! proxy, tried in random order like Salt's multi-master failover).

use serde::{Deserialize, Deserializer};

use super::validate::{parse_backend_url, BackendUrl};

/// Hub URLs accepted at most in `backend_url`.
pub const MAX_BACKEND_URLS: usize = 32;

/// Accepts `backend_url = "wss://a"` or `backend_url = ["wss://a", "wss://b"]`; a list is kept
/// as one comma-separated string (the form an environment override uses too).
pub(super) fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(list) => list.join(", "),
    })
}

/// Parses `backend_url`: one URL, or several separated by commas; each is checked as by
/// [`parse_backend_url`].
pub fn parse_backend_urls(value: &str) -> Result<Vec<BackendUrl>, String> {
    let urls: Vec<BackendUrl> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_backend_url)
        .collect::<Result<_, _>>()?;
    if urls.is_empty() {
        return Err("no hub URL given".into());
    }
    if urls.len() > MAX_BACKEND_URLS {
        return Err(format!("at most {MAX_BACKEND_URLS} hub URLs"));
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_a_list() {
        assert_eq!(parse_backend_urls("wss://a.test").unwrap().len(), 1);
        let two = parse_backend_urls("wss://a.test:1/ws/agent, wss://b.test:2").unwrap();
        assert_eq!(two[1].port, 2);
        assert!(parse_backend_urls("wss://a.test, ws://b.test").is_err());
        assert!(parse_backend_urls(" , ").is_err());
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "one_or_many")]
            u: String,
        }
        let t: T = toml::from_str("u = [\"wss://a.test\", \"wss://b.test\"]").unwrap();
        assert_eq!(t.u, "wss://a.test, wss://b.test");
        let t: T = toml::from_str("u = \"wss://a.test\"").unwrap();
        assert_eq!(t.u, "wss://a.test");
    }
}
