//! A strict parser for the Prometheus text exposition format 0.0.4, for the metrics tests.
//!
//! Written here rather than taken from a crate: `prometheus-client` only encodes, and the
//! parser crates on crates.io are small and unmaintained or accept far more than the format
//! allows. This one rejects anything the format does not allow: unknown `# TYPE` kinds, a
//! family typed twice, samples of an undeclared family, bad names, bad label syntax or
//! escapes, unparsable values, non-cumulative histogram buckets or a `+Inf` bucket that is
//! not `_count`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family: its `# TYPE`, `# HELP` and samples.
#[derive(Debug, Clone, Default)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

impl Family {
    /// The value of the sample named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = &s[1..];
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let key = &rest[..eq];
        if !valid_name(key) || key.starts_with("__") {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, Family>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|f| f.kind == "histogram" || f.kind == "summary")
            {
                return Some(base);
            }
        }
    }
    None
}

/// Parses a whole exposition; every error names the line.
pub fn parse(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_name(name) {
                        return Err(at("bad family name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    let f = families.entry(name.to_owned()).or_default();
                    if !f.kind.is_empty() || !f.samples.is_empty() {
                        return Err(at("TYPE given twice or after samples".into()));
                    }
                    f.kind = kind.to_owned();
                }
                (Some("HELP"), Some(name), help) => {
                    if !valid_name(name) {
                        return Err(at("bad family name".into()));
                    }
                    let f = families.entry(name.to_owned()).or_default();
                    if f.help.replace(help.unwrap_or("").to_owned()).is_some() {
                        return Err(at("HELP given twice".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = family_of(name, &families)
            .ok_or_else(|| at(format!("sample of undeclared family {name}")))?
            .to_owned();
        let f = families.get_mut(&family).expect("declared");
        if f.kind.is_empty() {
            return Err(at(format!("family {family} has HELP but no TYPE")));
        }
        f.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    for (name, f) in &families {
        if f.kind.is_empty() {
            return Err(format!("family {name} has HELP but no TYPE"));
        }
        if f.kind == "histogram" {
            check_histogram(name, f)?;
        }
    }
    Ok(families)
}

/// A series' labels other than `le`.
type LabelKey = Vec<(String, String)>;

/// Buckets cumulative, `+Inf` present and equal to `_count`, per label set.
fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    let mut series: BTreeMap<LabelKey, Vec<(f64, f64)>> = BTreeMap::new();
    for s in f.samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let le = s
            .labels
            .get("le")
            .ok_or(format!("{name}: bucket without le"))?;
        let key = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        series
            .entry(key)
            .or_default()
            .push((parse_value(le)?, s.value));
    }
    for (key, buckets) in series {
        let mut last = (f64::NEG_INFINITY, 0.0);
        for b in &buckets {
            if b.0 <= last.0 || b.1 < last.1 {
                return Err(format!(
                    "{name}{key:?}: buckets not increasing: {buckets:?}"
                ));
            }
            last = *b;
        }
        if last.0 != f64::INFINITY {
            return Err(format!("{name}{key:?}: no +Inf bucket"));
        }
        let count = f
            .samples
            .iter()
            .find(|s| {
                s.name == format!("{name}_count")
                    && key.iter().all(|(k, v)| s.labels.get(k) == Some(v))
            })
            .ok_or(format!("{name}: no _count"))?;
        if count.value != last.1 {
            return Err(format!(
                "{name}: +Inf bucket {} != _count {}",
                last.1, count.value
            ));
        }
    }
    Ok(())
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let f = parse(good).unwrap();
    assert_eq!(f["a_total"].value("a_total", &[("x", "1\"")]), Some(3.0));
    for bad in [
        "a 1\n",
        "# TYPE a counter\na{x=1} 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\n# TYPE a counter\n",
        "# TYPE a blob\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
