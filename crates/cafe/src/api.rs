//! The cafe's JSON API (DESIGN.md "External contract").

use crate::domain::{FieldError, ReservationRequest};
use crate::service::{self, Page, ReservationView, PAGE_ITEMS_DEFAULT};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rananeeti_node::{ApiError, ApiJson};
use rananeeti_platform::{CommandId, Outcome, Platform, SubmitError};
use serde_json::json;
use std::sync::Arc;

pub fn router(platform: Arc<Platform>) -> Router {
    Router::new()
        .route("/api/cafe/reservations", get(list).post(create))
        .route("/api/cafe/reservations/{id}", get(show))
        .with_state(platform)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReservation {
    name: String,
    party_size: i64,
    time: String,
    #[serde(default)]
    notes: Option<String>,
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        ApiError::invalid(error.field, error.message)
    }
}

/// `X-Rananeeti-Fault: db`: this one request sees a failed database.
pub fn simulates_store_failure(headers: &HeaderMap) -> bool {
    headers
        .get_all("x-rananeeti-fault")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|fault| fault.trim().eq_ignore_ascii_case("db"))
}

pub fn submit_error(error: SubmitError) -> ApiError {
    match &error {
        SubmitError::Queue(_) | SubmitError::QueueTimeout => ApiError::Unavailable(error.to_string()),
        _ => ApiError::Internal(error.to_string()),
    }
}

async fn create(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateReservation>,
) -> Result<Response, ApiError> {
    let request = ReservationRequest::parse(
        &body.name,
        body.party_size,
        &body.time,
        body.notes.as_deref(),
        time::OffsetDateTime::now_utc(),
    )?;
    let submitted =
        service::place(&platform, &request, simulates_store_failure(&headers)).await.map_err(submit_error)?;
    let id = submitted.id.to_hex();
    let response = match submitted.outcome {
        Outcome::Committed => (StatusCode::CREATED, Json(json!({ "id": id, "status": "committed" }))),
        Outcome::Pending => {
            let mut body = json!({ "id": id, "status": "pending" });
            if let Some(copied) = submitted.copied {
                // Whether a peer node also holds it (queue copies): false means this node only.
                body["copied"] = json!(copied);
            }
            (StatusCode::ACCEPTED, Json(body))
        }
        Outcome::Duplicate(current) => {
            (StatusCode::OK, Json(json!({ "id": id, "status": "duplicate", "current": current.as_str() })))
        }
        Outcome::Rejected { reason } => {
            (StatusCode::CONFLICT, Json(json!({ "id": id, "status": "rejected", "reason": reason })))
        }
    };
    Ok(response.into_response())
}

async fn show(
    State(platform): State<Arc<Platform>>,
    Path(id): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let id = CommandId::parse_hex(&id).map_err(|error| ApiError::invalid("id", error.to_string()))?;
    match service::get(&platform, &id).await {
        Ok(Some(reservation)) => Ok(Json(reservation)),
        Ok(None) => Err(ApiError::NotFound),
        Err(error) => Err(ApiError::Unavailable(error.to_string())),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
}

async fn list(
    State(platform): State<Arc<Platform>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::BadRequest { field: None, message: rejection.body_text() })?;
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            cursor
                .parse::<u64>()
                .ok()
                .filter(|cursor| *cursor <= i64::MAX as u64)
                .ok_or_else(|| ApiError::invalid("after", "use the \"next\" value of the previous page"))?,
        ),
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => PAGE_ITEMS_DEFAULT,
        Some(limit) => limit.parse::<usize>().unwrap_or(0),
    };
    if limit == 0 || limit > service::PAGE_ITEMS_MAX {
        return Err(ApiError::invalid("limit", format!("a whole number from 1 to {}", service::PAGE_ITEMS_MAX)));
    }
    Ok(Json(service::list(&platform, after, limit).await))
}
