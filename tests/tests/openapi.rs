//! docs/openapi.yaml against the code: every route the router serves (read from the
//! `.route("…", …)` calls in backend-agent/src) is documented with its methods, every `$ref`
//! resolves, and every request example is sent to a real backend and accepted (2xx, or the
//! status the example names in `x-status`); every query example of a read route is too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agentmesh_e2e::backend::{ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::meshctl::stream_status;
use agentmesh_e2e::{fleet, http};
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The spec as JSON.
fn spec() -> Value {
    let text = std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    to_json(&docs[0])
}

fn to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(r) => serde_json::json!(r.parse::<f64>().unwrap()),
        Yaml::Integer(i) => serde_json::json!(i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("unexpected key {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML node {other:?}"),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `.route("path", get(..).post(..))` in the backend's source: path -> methods.
fn router_routes() -> BTreeMap<String, Vec<String>> {
    let mut files = Vec::new();
    rust_files(&root().join("backend-agent/src"), &mut files);
    let mut routes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (start, _) in text.match_indices(".route(") {
            let call = &text[start + ".route(".len()..];
            // The call's text up to its closing parenthesis.
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or_else(|| panic!("unclosed .route( in {}", file.display()));
            let call = &call[..end];
            let Some(path) = call.split('"').nth(1) else {
                continue; // a route built from a variable: not ours to check here
            };
            // axum's `{*rest}` is OpenAPI's `{rest}`.
            let path = path.replace("{*", "{");
            let methods = METHODS
                .iter()
                .filter(|m| {
                    call.match_indices(&format!("{m}(")).any(|(i, _)| {
                        i == 0
                            || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                                && call.as_bytes()[i - 1] != b'_'
                                && call.as_bytes()[i - 1] != b':'
                    })
                })
                .map(|m| m.to_string())
                .collect();
            routes.insert(path, methods);
        }
    }
    routes
}

#[test]
fn the_router_is_read_from_the_source() {
    let routes = router_routes();
    assert_eq!(
        routes["/api/v1/agents/{id}"],
        ["get", "delete"],
        "{routes:?}"
    );
    assert_eq!(routes["/api/v1/commands"], ["get", "post"], "{routes:?}");
    assert!(routes.len() >= 12, "{routes:?}");
}

#[test]
fn every_route_the_router_serves_is_documented() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    for (path, methods) in router_routes() {
        // Exactly, or by a template (`/ui/app.js` is `/ui/{path}`).
        let item = paths
            .get(&path)
            .or_else(|| {
                paths
                    .iter()
                    .find(|(template, _)| matches_template(template, &path))
                    .map(|(_, item)| item)
            })
            .unwrap_or_else(|| panic!("{path} is served but not in docs/openapi.yaml"));
        for m in methods {
            let op = &item[&m];
            assert!(
                op.is_object(),
                "{} {path} is served but not documented",
                m.to_uppercase()
            );
            assert!(op["responses"].is_object(), "{m} {path}: no responses");
            assert!(
                op["x-agentmesh-role"].is_string(),
                "{m} {path}: no x-agentmesh-role"
            );
        }
    }
    // The event stream and the page are in the contract even before their routes land here.
    for path in ["/api/v1/events", "/ui", "/ui/", "/ui/{path}"] {
        assert!(paths.contains_key(path), "{path} missing");
    }
}

/// Whether a concrete route is an instance of an OpenAPI path template.
fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            t == p
                || (t.starts_with('{') && t.ends_with('}') && !p.is_empty() && !p.starts_with('{'))
        })
}

#[test]
fn templates_match_concrete_routes_only() {
    assert!(matches_template("/ui/{path}", "/ui/app.js"));
    assert!(!matches_template("/ui/{path}", "/ui/"));
    assert!(!matches_template("/ui/{path}", "/ui/a/b"));
    assert!(!matches_template(
        "/api/v1/agents/{id}",
        "/api/v1/agents/{id}/labels"
    ));
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves_and_every_error_has_the_error_shape() {
    let spec = spec();
    let mut all = Vec::new();
    refs(&spec, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(spec.pointer(pointer).is_some(), "{r} does not resolve");
    }
    let error = &spec["components"]["schemas"]["Error"];
    assert_eq!(
        error["properties"]["error"]["required"],
        serde_json::json!(["code", "message"])
    );
}

/// Resolves a `$ref` (one level is all the spec uses).
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => spec.pointer(&r[1..]).unwrap(),
        None => v,
    }
}

/// Parameters of an operation (path-level and its own), resolved.
fn params<'a>(spec: &'a Value, item: &'a Value, op: &'a Value) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for list in [&item["parameters"], &op["parameters"]] {
        for p in list.as_array().into_iter().flatten() {
            out.push(resolve(spec, p));
        }
    }
    out
}

fn fill_path(path: &str, params: &[&Value]) -> String {
    let mut path = path.to_owned();
    for p in params.iter().filter(|p| p["in"] == "path") {
        let name = p["name"].as_str().unwrap();
        let example = p["example"]
            .as_str()
            .unwrap_or_else(|| panic!("path parameter {name} of {path} has no example"));
        path = path.replace(&format!("{{{name}}}"), example);
    }
    path
}

fn token(op: &Value) -> Option<&'static str> {
    match op["x-agentmesh-role"].as_str() {
        Some("viewer") => Some(VIEWER_TOKEN),
        Some("operator") => Some(OPERATOR_TOKEN),
        Some("admin") => Some(ADMIN_TOKEN),
        _ => None,
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_is_accepted_by_a_real_backend() {
    let spec = spec();
    let fleet = fleet::fleet(&[("edge-01", "web"), ("edge-02", "web")]).await;
    let addr = fleet.hub.http;
    let mut sent = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in METHODS {
            let op = &item[method];
            if !op.is_object() {
                continue;
            }
            let params = params(&spec, item, op);
            let url = fill_path(path, &params);
            let documented = |status: u16| op["responses"].get(status.to_string()).is_some();
            // Request bodies.
            let examples = &op["requestBody"]["content"]["application/json"]["examples"];
            for (name, example) in examples.as_object().into_iter().flatten() {
                let body = example["value"].to_string();
                let resp =
                    http::request(addr, &method.to_uppercase(), &url, token(op), Some(&body)).await;
                let what = format!(
                    "{} {url} example {name}: {} {}",
                    method.to_uppercase(),
                    resp.status,
                    resp.body
                );
                match example["x-status"].as_u64() {
                    Some(s) => assert_eq!(u64::from(resp.status), s, "{what}"),
                    None => assert!((200..300).contains(&resp.status), "{what}"),
                }
                assert!(documented(resp.status), "undocumented status: {what}");
                sent += 1;
            }
            // Query examples of the read routes (the endless event stream: its status line).
            if method == "get" && path.starts_with("/api/v1/") {
                let query: Vec<String> = params
                    .iter()
                    .filter(|p| p["in"] == "query" && !p["example"].is_null())
                    .flat_map(|p| {
                        let name = p["name"].as_str().unwrap().to_owned();
                        let values: Vec<Value> = match &p["example"] {
                            Value::Array(a) => a.clone(),
                            v => vec![v.clone()],
                        };
                        values.into_iter().map(move |v| {
                            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                            format!("{name}={}", encode(&v))
                        })
                    })
                    .collect();
                let full = if query.is_empty() {
                    url.clone()
                } else {
                    format!("{url}?{}", query.join("&"))
                };
                if path == "/api/v1/events" {
                    // Until the route is in this tree's router it is the fallback's 404.
                    let served = router_routes().contains_key(path.as_str());
                    let status = stream_status(addr, &full, token(op).unwrap()).await;
                    assert_eq!(status, if served { 200 } else { 404 }, "GET {full}");
                    sent += 1;
                    continue;
                }
                let resp = http::request(addr, "GET", &full, token(op), None).await;
                // A command id in an example path is not a live one: 404 is the documented answer.
                let ok = (200..300).contains(&resp.status)
                    || (resp.status == 404 && path.contains("commands/{id}"));
                assert!(
                    ok && documented(resp.status),
                    "GET {full}: {} {}",
                    resp.status,
                    resp.body
                );
                sent += 1;
            }
        }
    }
    // 9 request bodies, 5 read routes and the event stream today.
    assert!(sent >= 15, "only {sent} examples sent");
}
