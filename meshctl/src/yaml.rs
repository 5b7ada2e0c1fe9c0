//! A small YAML emitter for `serde_json::Value` (block style). Strings that could be read as
//! anything but a plain string are written double-quoted with JSON escapes, which YAML reads
//! the same way.

use serde_json::Value;

/// Renders `value` as a YAML document (ends with a newline).
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => seq(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn map(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        // The first key of a map inside a sequence item follows the "- " already written.
        if i > 0 || !out.ends_with("- ") {
            pad(out, indent);
        }
        out.push_str(&string(k));
        out.push(':');
        value_after(out, v, indent);
    }
}

fn seq(out: &mut String, a: &[Value], indent: usize) {
    for v in a {
        if !out.ends_with("- ") {
            pad(out, indent);
        }
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => map(out, m, indent + 2),
            Value::Array(inner) if !inner.is_empty() => seq(out, inner, indent + 2),
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

fn value_after(out: &mut String, v: &Value, indent: usize) {
    if is_block(v) {
        out.push('\n');
        match v {
            Value::Object(m) => map(out, m, indent + 2),
            Value::Array(a) => seq(out, a, indent + 2),
            _ => {}
        }
    } else {
        out.push(' ');
        out.push_str(&scalar(v));
        out.push('\n');
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

fn string(s: &str) -> String {
    if plain_ok(s) {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

/// Whether `s` reads back as the same string when written plain.
fn plain_ok(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False", "FALSE", "yes",
        "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    if WORDS.contains(&s) || !(first.is_ascii_alphabetic() || first == '_' || first == '/') {
        return false;
    }
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@' | '+'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reads YAML back into JSON with a real parser (dev-dependency only).
    fn back(text: &str) -> Value {
        let docs = yaml_rust2::YamlLoader::load_from_str(text).unwrap();
        to_json(&docs[0])
    }

    fn to_json(y: &yaml_rust2::Yaml) -> Value {
        use yaml_rust2::Yaml;
        match y {
            Yaml::Real(r) => json!(r.parse::<f64>().unwrap()),
            Yaml::Integer(i) => json!(i),
            Yaml::String(s) => json!(s),
            Yaml::Boolean(b) => json!(b),
            Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
            Yaml::Hash(h) => Value::Object(
                h.iter()
                    .map(|(k, v)| (k.as_str().unwrap().to_owned(), to_json(v)))
                    .collect(),
            ),
            Yaml::Null => Value::Null,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn round_trips_through_a_real_parser() {
        let v = json!({
            "agents": [
                {"id": "edge-01", "labels": {"role": "db", "x": "<script>"}, "verbs": [], "n": 3},
                {"id": "true", "hostname": "a: b # c", "empty": {}, "nested": [[1, 2], ["x"]]},
            ],
            "count": 2,
            "next": null,
            "ok": true,
            "text": "line1\nline2\t\"q\"",
            "num_like": "0123",
            "dash": "- x",
            "": "empty key",
            "pi": 3.5,
        });
        let text = to_string(&v);
        assert_eq!(back(&text), v, "{text}");
    }

    #[test]
    fn scalars_and_empty_documents() {
        assert_eq!(to_string(&json!([])), "[]\n");
        assert_eq!(to_string(&json!("yes")), "\"yes\"\n");
        assert_eq!(to_string(&json!({"a": "b"})), "a: b\n");
    }
}
