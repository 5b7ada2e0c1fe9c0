//! The fleet page at `/ui/`: plain HTML, CSS and JavaScript embedded in the binary (no build
//! step), served with a strict Content-Security-Policy. The page only calls the public API
//! with the operator's bearer token (kept in `sessionStorage`, never in a cookie or URL the
//! server sees), so it can do nothing a script could not.

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's Content-Security-Policy: no inline script or style, only this origin.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'self'";

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const PAGES: &str = include_str!("../../ui/pages.js");
const STYLE: &str = include_str!("../../ui/app.css");
const ICON: &str = include_str!("../../ui/icon.svg");

/// Routes of the page (merged into the API router): `/ui/` and `/ui/{path}` for its assets.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route("/ui/{path}", get(by_name))
}

/// An embedded asset by file name; anything else is 404.
async fn by_name(Path(name): Path<String>) -> Response {
    match lookup(&name) {
        Some((content_type, body)) => asset(content_type, body),
        None => crate::api::ApiError::not_found("no such file in the page").into_response(),
    }
}

fn lookup(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "index.html" => ("text/html; charset=utf-8", INDEX),
        "app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "pages.js" => ("text/javascript; charset=utf-8", PAGES),
        "app.css" => ("text/css; charset=utf-8", STYLE),
        "icon.svg" => ("image/svg+xml", ICON),
        _ => return None,
    })
}

/// One embedded file with the page's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // Small and embedded: always revalidate, so an upgraded backend serves its own page.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (StatusCode::OK, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_carry_type_and_security_headers() {
        let r = asset("text/css; charset=utf-8", STYLE);
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        let value = |name: HeaderName| h.get(name).map(|v| v.as_bytes().to_vec());
        assert_eq!(
            value(header::CONTENT_TYPE),
            Some(b"text/css; charset=utf-8".to_vec())
        );
        assert_eq!(
            value(header::CONTENT_SECURITY_POLICY),
            Some(CSP.as_bytes().to_vec())
        );
        assert_eq!(
            value(header::X_CONTENT_TYPE_OPTIONS),
            Some(b"nosniff".to_vec())
        );
        assert_eq!(
            value(header::REFERRER_POLICY),
            Some(b"no-referrer".to_vec())
        );
    }

    #[test]
    fn every_asset_has_a_type_and_unknown_names_none() {
        for name in ["index.html", "app.js", "pages.js", "app.css", "icon.svg"] {
            assert!(lookup(name).is_some(), "{name}");
        }
        for name in ["", "..", "../Cargo.toml", "app.js.map", "APP.JS"] {
            assert!(lookup(name).is_none(), "{name}");
        }
    }

    #[test]
    fn page_has_no_inline_script_or_style_and_no_inner_html() {
        assert!(!INDEX.contains("<script>"), "inline script");
        assert!(!INDEX.contains("style="), "inline style");
        assert!(!INDEX.contains("<style"), "inline style block");
        assert!(INDEX.contains(r#"<script src="app.js" defer></script>"#));
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(bad), "app.js uses {bad}");
            assert!(!PAGES.contains(bad), "pages.js uses {bad}");
        }
    }
}
