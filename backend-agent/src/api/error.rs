//! The API's one error type: maps to the contract's status codes and JSON shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered as `{"error": {"code", "message"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message (never internals).
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 429 with `Retry-After`.
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after = Some(crate::limits::retry_after_secs(wait));
        e
    }
    /// 503 `store_unavailable` with `Retry-After` when the store cannot be reached right now
    /// (see [`crate::store::StoreError::is_unavailable`]), else [`ApiError::internal`].
    pub fn store(cause: &crate::store::StoreError) -> Self {
        if !cause.is_unavailable() {
            return Self::internal(cause);
        }
        tracing::warn!(error = %cause, "store unavailable answering an API request");
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store cannot be reached right now; retry later",
        );
        e.retry_after = Some(1);
        e
    }
    /// 500; the cause is logged here, once, and not shown to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error answering an API request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the backend log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut resp = (self.status, body).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"agentmesh\""),
            );
        }
        resp
    }
}

impl From<crate::authz::AuthzError> for ApiError {
    fn from(e: crate::authz::AuthzError) -> Self {
        match e {
            crate::authz::AuthzError::Forbidden(m) => Self::forbidden(m),
            crate::authz::AuthzError::NotFound(m) => Self::not_found(m),
        }
    }
}

impl From<crate::commands::read::ReadError> for ApiError {
    fn from(e: crate::commands::read::ReadError) -> Self {
        use crate::commands::read::ReadError;
        match &e {
            ReadError::Denied(d) => d.clone().into(),
            ReadError::BadFilter(m) => Self::bad_request(m),
            ReadError::Store(s) => Self::store(s),
            ReadError::Audit(a) => Self::internal(a),
            ReadError::Busy => {
                let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string());
                err.retry_after = Some(1);
                err
            }
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn an_unreachable_store_is_503_store_unavailable_with_retry_after() {
        let e = ApiError::store(&StoreError::Unavailable("cannot connect".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, "store_unavailable");
        assert_eq!(e.retry_after, Some(1));
        let resp = e.into_response();
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }

    #[test]
    fn other_store_errors_stay_500_internal() {
        let e = ApiError::store(&StoreError::Corrupt("bad row".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code, "internal");
    }
}
