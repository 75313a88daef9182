//! `ApiJson<T>`: axum's `Json` with rejections turned into `ApiError`s that name the field.

use crate::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(rejection_to_error(rejection)),
        }
    }
}

fn rejection_to_error(rejection: JsonRejection) -> ApiError {
    let message = rejection.body_text();
    match rejection.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => return ApiError::UnsupportedMediaType,
        StatusCode::PAYLOAD_TOO_LARGE => return ApiError::PayloadTooLarge,
        _ => {}
    }
    let field = field_named_in(&message);
    ApiError::BadRequest { field, message: clean(&message) }
}

/// serde names the offending field as "unknown field `x`" or "missing field `x`" or "x: invalid type".
fn field_named_in(message: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            return rest.find('`').map(|end| rest[..end].to_string());
        }
    }
    let detail = message.rsplit("target type: ").next()?;
    let (path, _) = detail.split_once(": ")?;
    (!path.contains(' ') && !path.is_empty() && !path.starts_with('[')).then(|| path.to_string())
}

/// Drops axum's "Failed to deserialize the JSON body into the target type:" preamble.
fn clean(message: &str) -> String {
    message.rsplit("target type: ").next().unwrap_or(message).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unknown_missing_and_mistyped_fields() {
        assert_eq!(
            field_named_in("Failed to deserialize the JSON body into the target type: unknown field `color`, expected one of `name`").as_deref(),
            Some("color")
        );
        assert_eq!(field_named_in("missing field `name` at line 1 column 2").as_deref(), Some("name"));
        assert_eq!(
            field_named_in("Failed to deserialize the JSON body into the target type: party_size: invalid type: string \"x\", expected i64 at line 1 column 20").as_deref(),
            Some("party_size")
        );
        assert_eq!(field_named_in("Failed to parse the request body as JSON: EOF while parsing"), None);
    }
}
