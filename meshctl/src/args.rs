//! `param=value` arguments typed by a verb's schema and checked with the same
//! [`VerbSpec::validate_args`] the backend and the agent use, so a wrong value is refused here,
//! before anything is sent, with the parameter named.

use agentmesh_protocol::verbs::{ParamKind, VerbSpec};
use serde_json::{Map, Value};

use crate::Error;

/// Types `pairs` by `spec` and validates them; `Err` is a usage error naming the parameter.
pub fn typed(spec: &VerbSpec, pairs: &[String]) -> Result<Map<String, Value>, Error> {
    let mut args = Map::new();
    for pair in pairs {
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("argument {pair:?} is not param=value")))?;
        let Some(param) = spec.params.get(name) else {
            let known: Vec<&str> = spec.params.keys().map(String::as_str).collect();
            return Err(Error::usage(format!(
                "verb {}: unknown parameter `{name}` (it takes: {})",
                spec.name,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        let refuse = |what: &str| {
            Error::usage(format!(
                "verb {}: param `{name}`: {what}, not {raw:?}",
                spec.name
            ))
        };
        let value = match &param.kind {
            ParamKind::Integer { .. } => Value::from(
                raw.parse::<i64>()
                    .map_err(|_| refuse("expected an integer"))?,
            ),
            ParamKind::Boolean => match raw {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(refuse("expected true or false")),
            },
            ParamKind::String { .. } | ParamKind::Enum { .. } => Value::String(raw.to_owned()),
        };
        if args.insert(name.to_owned(), value).is_some() {
            return Err(Error::usage(format!("param `{name}` given twice")));
        }
    }
    spec.validate_args(&args)
        .map_err(|e| Error::usage(format!("verb {}: {e}", spec.name)))?;
    Ok(args)
}

/// Arguments for a verb no schema is known for: strings, for the backend to judge.
pub fn untyped(pairs: &[String]) -> Result<Map<String, Value>, Error> {
    let mut args = Map::new();
    for pair in pairs {
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("argument {pair:?} is not param=value")))?;
        args.insert(name.to_owned(), Value::String(raw.to_owned()));
    }
    Ok(args)
}

/// One line describing a parameter's schema, for `meshctl agent`.
pub fn describe(kind: &ParamKind) -> String {
    match kind {
        ParamKind::String {
            pattern, max_len, ..
        } => {
            let mut s = "string".to_owned();
            if let Some(p) = pattern {
                s.push_str(&format!(" /{p}/"));
            }
            if let Some(m) = max_len {
                s.push_str(&format!(" max {m} B"));
            }
            s
        }
        ParamKind::Integer { min, max } => match (min, max) {
            (None, None) => "integer".to_owned(),
            _ => format!(
                "integer [{}, {}]",
                min.map_or("-".to_owned(), |v| v.to_string()),
                max.map_or("-".to_owned(), |v| v.to_string())
            ),
        },
        ParamKind::Boolean => "boolean".to_owned(),
        ParamKind::Enum { values } => format!("one of {}", values.join("|")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> VerbSpec {
        serde_json::from_value(serde_json::json!({
            "name": "typed",
            "params": {
                "name": {"type": "string", "pattern": "[a-z]{3,8}", "required": true},
                "count": {"type": "integer", "min": 1, "max": 10},
                "flag": {"type": "boolean"},
                "color": {"type": "enum", "values": ["red", "blue"]}
            }
        }))
        .unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_are_typed_by_the_schema() {
        let args = typed(
            &spec(),
            &strings(&["name=abc", "count=3", "flag=true", "color=red"]),
        )
        .unwrap();
        assert_eq!(
            Value::Object(args),
            serde_json::json!({"name": "abc", "count": 3, "flag": true, "color": "red"})
        );
    }

    #[test]
    fn wrong_values_are_refused_naming_the_parameter() {
        for (bad, param) in [
            (vec!["name=abc", "count=x"], "count"),
            (vec!["name=abc", "count=11"], "count"),
            (vec!["name=ABC"], "name"),
            (vec!["name=abc", "flag=yes"], "flag"),
            (vec!["name=abc", "color=green"], "color"),
            (vec!["count=2"], "name"),
            (vec!["name=abc", "nope=1"], "nope"),
        ] {
            let e = typed(&spec(), &strings(&bad)).unwrap_err();
            assert!(
                e.to_string().contains(&format!("`{param}`")),
                "{bad:?}: {e}"
            );
            assert_eq!(e.exit_code(), 2);
        }
        assert!(typed(&spec(), &strings(&["name"])).is_err());
    }
}
