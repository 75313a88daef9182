//! The one HTTP error type: clients get a clear 4xx naming the field, or a plain 5xx with the
//! request id; the detail goes to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rananeeti_platform::{CommandState, Outcome, SubmitError, Submitted};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Input parsed but broke a rule: 422 with the field.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Input could not be read (bad JSON, unknown field, wrong type): 400.
    #[error("bad request: {message}")]
    BadRequest { field: Option<String>, message: String },
    #[error("not found")]
    NotFound,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unauthorized")]
    Unauthorized,
    /// A credential that does not allow this (a shopper's token on an admin route): 403.
    #[error("forbidden")]
    Forbidden,
    /// A limit for this caller was reached (sign-in lock-out, hashing queue full): 429 with
    /// `Retry-After`.
    #[error("too many requests")]
    TooManyRequests { retry_after_seconds: u64, message: String },
    /// The store cannot answer and nothing else can: 503, retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure: 500; the detail is logged, not sent.
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid { field: field.into(), message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (field, message) = match &self {
            ApiError::Invalid { field, message } => (Some(field.clone()), message.clone()),
            ApiError::BadRequest { field, message } => (field.clone(), message.clone()),
            ApiError::NotFound => (None, "not found".to_string()),
            ApiError::UnsupportedMediaType => (None, "send JSON with Content-Type: application/json".to_string()),
            ApiError::PayloadTooLarge => (None, "the request body is too large".to_string()),
            ApiError::Unauthorized => (None, "missing or wrong bearer token".to_string()),
            ApiError::Forbidden => (None, "this credential does not allow that".to_string()),
            ApiError::TooManyRequests { message, .. } => (None, message.clone()),
            ApiError::Unavailable(detail) => {
                tracing::warn!(detail, "request answered 503");
                (None, "temporarily unavailable; retry shortly".to_string())
            }
            ApiError::Internal(detail) => {
                tracing::error!(detail, "request failed");
                (None, "internal error; the request id is in the X-Request-Id header".to_string())
            }
        };
        let mut body = serde_json::json!({ "error": { "message": message } });
        if let Some(field) = field {
            body["error"]["field"] = serde_json::Value::String(field);
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        match &self {
            ApiError::TooManyRequests { retry_after_seconds, .. } => {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, (*retry_after_seconds).into());
            }
            ApiError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A submit that could not be answered with an outcome: the queue could not take it (503, the
/// client retries) or something that should not happen (500).
impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> ApiError {
        match &error {
            SubmitError::Queue(_) | SubmitError::QueueTimeout => ApiError::Unavailable(error.to_string()),
            _ => ApiError::Internal(error.to_string()),
        }
    }
}

/// A submit's outcome as every app's JSON API answers it: 201 committed, 202 pending, 200
/// duplicate (with where the first stands, and its reason when it was rejected), 409 rejected
/// with the reason; a pending answer says whether a peer node holds a copy (`copied`). `extra`'s fields (an object) are added to the body.
pub fn submitted_response(submitted: Submitted, extra: Value) -> Response {
    let id = submitted.id.to_hex();
    let (status, mut body) = match submitted.outcome {
        Outcome::Committed => (StatusCode::CREATED, json!({ "id": id, "status": "committed" })),
        Outcome::Pending => {
            let mut body = json!({ "id": id, "status": "pending" });
            if let Some(copied) = submitted.copied {
                // Whether a peer node also holds it (queue copies): false means this node only.
                body["copied"] = json!(copied);
            }
            (StatusCode::ACCEPTED, body)
        }
        Outcome::Duplicate { first } => {
            let mut body = json!({ "id": id, "status": "duplicate", "current": first.as_str() });
            if let CommandState::Rejected { reason } = first {
                body["reason"] = json!(reason);
            }
            (StatusCode::OK, body)
        }
        Outcome::Rejected { reason } => {
            (StatusCode::CONFLICT, json!({ "id": id, "status": "rejected", "reason": reason }))
        }
    };
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    (status, Json(body)).into_response()
}
