//! `Idempotency-Key` on every write (the HTTP idempotency-key draft): the same key from the same
//! caller within 24 hours gets the first request's answer and is never applied twice, on any node
//! of any region; the same key with another body is 422.
//!
//! One layer over every route of the node, so each app's write endpoints honour it without
//! knowing it. A page's form carries its key as the hidden field `idempotency_key` (a double
//! submit of one form is one write). The layer:
//! 1. answers a replay from the answer recorded for the key (the region's store, else this node's
//!    queue), or 422 when that answer was for another request;
//! 2. otherwise serves the request inside `requests::within`, so every command it submits
//!    carries the request's id, which the store keeps unique: a retry that reaches the app again
//!    (the first answer not yet recorded, or lost with a crashed node) meets the first command
//!    and gets its outcome;
//! 3. records the answer of a request that submitted a command (stored, or queued, and
//!    replicated) before answering.
//!
//! When the node that applied a request stopped before recording its answer, a retry finds the
//! request's first command in the store and answers where it stands (the shared shape of a
//! submit's answer, without the app's extra fields), rather than running the app again on the
//! state the first try changed (an admin's book create would say "exists").

use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rananeeti_platform::requests::KEY_BYTES_MAX;
use rananeeti_platform::{CommandState, CommandStatus, Platform, RecordedAnswer, RequestKey};
use std::sync::Arc;

/// The request header that carries a caller's key.
pub const KEY_HEADER: &str = "idempotency-key";
/// The form field that carries a page form's key.
pub const FORM_FIELD: &str = "idempotency_key";
/// Set on an answer replayed from the record.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Answers larger than this are not recorded (a replay then reaches the app, which still applies
/// nothing twice).
const RECORDED_BODY_BYTES_MAX: usize = 256 * 1024;

#[derive(Clone)]
pub struct Idempotency {
    pub platform: Arc<Platform>,
    pub body_bytes_max: usize,
}

/// The layer's function (`axum::middleware::from_fn_with_state`).
pub async fn honour_keys(State(state): State<Idempotency>, request: Request, next: Next) -> Response {
    if !matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        return next.run(request).await;
    }
    let header_key = match header_key(request.headers()) {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    if header_key.is_none() && !is_form(request.headers()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, state.body_bytes_max).await {
        Ok(body) => body,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let Some(key) = header_key.or_else(|| form_key(&body)) else {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    };
    let caller = parts.headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
    let path_and_query = parts.uri.path_and_query().map(|path| path.as_str()).unwrap_or("/");
    let request_key = RequestKey::new(caller, &key, parts.method.as_str(), path_and_query, &body);

    if let Some(answer) = state.platform.recorded_answer(&request_key).await {
        if answer.fingerprint != request_key.fingerprint_hex() {
            return ApiError::invalid(
                "Idempotency-Key",
                "this key was already used for another request; send a new key for a new request",
            )
            .into_response();
        }
        return replay(answer);
    }

    // Served before, its answer lost with the node that applied it: say where its command stands
    // rather than run the app again on state the first try changed.
    if let Some(first) = state.platform.first_submit_of(&request_key).await {
        return answer_from_status(&first, is_form(&parts.headers).then_some(&parts.headers));
    }

    let serve = next.run(Request::from_parts(parts, Body::from(body)));
    let (response, submits) = rananeeti_platform::requests::within(request_key, serve).await;
    if submits == 0 || !worth_recording(response.status()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The app's answers are bounded by what it renders; only the recorded copy has a limit.
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            tracing::warn!(%error, "answer to a keyed request could not be read");
            return ApiError::Internal(error.to_string()).into_response();
        }
    };
    if body.len() > RECORDED_BODY_BYTES_MAX {
        tracing::warn!(
            bytes = body.len(),
            "answer to a keyed request too large to record; a replay reaches the app again"
        );
        return Response::from_parts(parts, Body::from(body));
    }
    if let Ok(text) = std::str::from_utf8(&body) {
        let answer = RecordedAnswer {
            scope: request_key.scope_hex(),
            fingerprint: request_key.fingerprint_hex(),
            status: parts.status.as_u16(),
            content_type: header_text(&parts.headers, header::CONTENT_TYPE),
            location: header_text(&parts.headers, header::LOCATION),
            body: text.to_string(),
            recorded_at_ms: rananeeti_platform::hlc::wall_clock_ms(),
        };
        if let Err(error) = state.platform.record_answer(&request_key, answer).await {
            tracing::warn!(%error, "answer to a keyed request not recorded; a replay reaches the app again");
        }
    }
    Response::from_parts(parts, Body::from(body))
}

/// The caller's key from the header; `Ok(None)` when there is none.
fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(KEY_HEADER) else { return Ok(None) };
    let text = value.to_str().ok().map(str::trim).unwrap_or_default();
    // The draft's key is a string; surrounding quotes (a structured-field string) are not part of it.
    let text = text.strip_prefix('"').and_then(|text| text.strip_suffix('"')).unwrap_or(text);
    valid_key(text).map(|key| Some(key.to_string())).ok_or_else(|| ApiError::BadRequest {
        field: Some("Idempotency-Key".to_string()),
        message: format!("an idempotency key is 1 to {KEY_BYTES_MAX} visible ASCII characters"),
    })
}

fn valid_key(key: &str) -> Option<&str> {
    let visible = key.bytes().all(|byte| byte.is_ascii_graphic());
    (visible && (1..=KEY_BYTES_MAX).contains(&key.len())).then_some(key)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"))
}

/// A page form's key: its `idempotency_key` field.
fn form_key(body: &Bytes) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(name, _)| name == FORM_FIELD)
        .and_then(|(_, value)| valid_key(value.trim()).map(str::to_string))
}

/// Answers a retry could not have changed: not a failure of ours or a limit (5xx, 408, 429), for
/// which a retry should run again.
fn worth_recording(status: StatusCode) -> bool {
    !(status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS)
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string)
}

/// The answer to a request whose first command is known but whose answer was not recorded: the
/// shared shape of a submit's answer (201 committed, 202 pending, 409 rejected, with the id), or
/// for a page's form, back to the page it was sent from.
fn answer_from_status(first: &CommandStatus, form: Option<&HeaderMap>) -> Response {
    let mut response = match form {
        Some(headers) => {
            let back = headers
                .get(header::REFERER)
                .and_then(|value| value.to_str().ok())
                .and_then(|referer| referer.parse::<axum::http::Uri>().ok())
                .map(|uri| uri.path().to_string())
                .filter(|path| path.starts_with('/') && !path.starts_with("//"))
                .unwrap_or_else(|| "/".to_string());
            let mut response = StatusCode::SEE_OTHER.into_response();
            if let Ok(value) = HeaderValue::from_str(&back) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        None => {
            let status = match first.state {
                CommandState::Committed => StatusCode::CREATED,
                CommandState::Pending => StatusCode::ACCEPTED,
                CommandState::Rejected { .. } => StatusCode::CONFLICT,
            };
            let mut body = serde_json::json!({ "id": first.id, "status": first.state.as_str() });
            if let CommandState::Rejected { reason } = &first.state {
                body["reason"] = serde_json::json!(reason);
            }
            (status, axum::Json(body)).into_response()
        }
    };
    response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

fn replay(answer: RecordedAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    for (name, value) in [(header::CONTENT_TYPE, answer.content_type), (header::LOCATION, answer.location)] {
        if let Some(value) = value.and_then(|value| HeaderValue::from_str(&value).ok()) {
            headers.insert(name, value);
        }
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_and_bounded() {
        assert_eq!(valid_key("a-b_c.1"), Some("a-b_c.1"));
        assert_eq!(valid_key(""), None);
        assert_eq!(valid_key("has space"), None);
        assert_eq!(valid_key(&"k".repeat(KEY_BYTES_MAX + 1)), None);
        let mut headers = HeaderMap::new();
        headers.insert(KEY_HEADER, HeaderValue::from_static("\"quoted-key\""));
        assert_eq!(header_key(&headers).unwrap().as_deref(), Some("quoted-key"));
    }

    #[test]
    fn a_form_carries_its_key_in_a_field() {
        let body = Bytes::from_static(b"name=Ann&idempotency_key=f0rm-k3y&party_size=2");
        assert_eq!(form_key(&body).as_deref(), Some("f0rm-k3y"));
        assert_eq!(form_key(&Bytes::from_static(b"name=Ann")), None);
    }

    #[test]
    fn failures_and_limits_are_not_recorded() {
        assert!(worth_recording(StatusCode::CREATED));
        assert!(worth_recording(StatusCode::CONFLICT));
        assert!(worth_recording(StatusCode::SEE_OTHER));
        assert!(!worth_recording(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!worth_recording(StatusCode::TOO_MANY_REQUESTS));
    }
}
