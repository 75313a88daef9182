//! The cafe's JSON API (docs/design.md "External contract").

use crate::closure::{self, ClosurePayload};
use crate::domain::{FieldError, ReservationRequest};
use crate::service::{self, Page, ReservationView, PAGE_ITEMS_DEFAULT};
use crate::special::{self, SpecialPayload};
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rananeeti_node::caller::Admin;
use rananeeti_node::error::submitted_response;
use rananeeti_node::security::Security;
use rananeeti_node::{ApiError, ApiJson};
use rananeeti_platform::{CommandId, Delivery, NewCommand, Platform, SubmitOptions};
use serde_json::json;
use std::sync::Arc;

pub fn router(platform: Arc<Platform>) -> Router {
    Router::new()
        .route("/api/cafe/openapi.json", get(openapi))
        .route("/api/cafe/reservations", get(list).post(create))
        .route("/api/cafe/reservations/{id}", get(show))
        .route("/api/cafe/specials/{day}", get(show_special).put(set_special))
        .route("/api/cafe/closures/{day}", get(show_closure).put(set_closure))
        .with_state(platform)
}

/// The API's OpenAPI 3 document.
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
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

/// `X-Rananeeti-Fault: db`: this one request sees a failed database. A demo switch: honoured only
/// when the node runs with `node.demo` (as `up` does), ignored otherwise.
/// Where this request's write goes first: a failed store when the demo header asks for it.
pub fn delivery(security: &Security, headers: &HeaderMap) -> Delivery {
    if simulates_store_failure(security, headers) {
        Delivery::SimulatedStoreFailure
    } else {
        Delivery::Store
    }
}

pub fn simulates_store_failure(security: &Security, headers: &HeaderMap) -> bool {
    security.config.demo
        && headers
            .get_all("x-rananeeti-fault")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|fault| fault.trim().eq_ignore_ascii_case("db"))
}

async fn create(
    State(platform): State<Arc<Platform>>,
    Extension(security): Extension<Security>,
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
    let submitted = service::place(&platform, &request, delivery(&security, &headers)).await.map_err(ApiError::from)?;
    Ok(submitted_response(submitted, json!({})))
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

/// Every booking (names and notes): the staff's view, for the admin token only.
async fn list(
    State(platform): State<Arc<Platform>>,
    _admin: Admin,
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetSpecial {
    dish: String,
    price_cents: i64,
}

/// Sets the day's special (the admin's). The write is `local`: any region takes it; concurrent ones resolve
/// by last-writer-wins and the loser is in `GET /admin/conflicts`.
async fn set_special(
    State(platform): State<Arc<Platform>>,
    _admin: Admin,
    Extension(security): Extension<Security>,
    Path(day): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SetSpecial>,
) -> Result<Response, ApiError> {
    // What this write replaces, as seen here now (0 when unknown or none).
    let replaces_hlc = match platform.reader().await {
        Ok(pool) => special::get(&pool, day.trim()).await.ok().flatten().map(|current| current.hlc).unwrap_or(0),
        Err(_) => 0,
    };
    let payload = SpecialPayload::parse(&day, &body.dish, body.price_cents, replaces_hlc)?;
    // The edit must be stamped after what it replaces, whatever this node's clock says.
    platform.observe(rananeeti_platform::Hlc(replaces_hlc));
    let id = payload.id();
    let submitted = platform
        .submit(
            NewCommand {
                kind: special::KIND_SET_SPECIAL,
                id,
                payload: serde_json::to_value(&payload).expect("a special serializes"),
            },
            SubmitOptions::delivered(delivery(&security, &headers)),
        )
        .await
        .map_err(ApiError::from)?;
    Ok(submitted_response(submitted, json!({})))
}

async fn show_special(
    State(platform): State<Arc<Platform>>,
    Path(day): Path<String>,
) -> Result<Json<special::Special>, ApiError> {
    let day = SpecialPayload::parse(&day, "-", 0, 0)?.day;
    let pool = platform.reader().await.map_err(|error| ApiError::Unavailable(error.to_string()))?;
    match special::get(&pool, &day).await {
        Ok(Some(special)) => Ok(Json(special)),
        Ok(None) => Err(ApiError::NotFound),
        Err(error) => Err(ApiError::Unavailable(error.to_string())),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetClosure {
    closed: bool,
    #[serde(default)]
    reason: String,
}

/// Closes (or reopens) the cafe on a day (the admin's). The write is `global`: the region acting for the
/// primary applies it; from any other region it is forwarded, or queued for the primary
/// (*pending*) while the primary cannot be reached.
async fn set_closure(
    State(platform): State<Arc<Platform>>,
    _admin: Admin,
    Extension(security): Extension<Security>,
    Path(day): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SetClosure>,
) -> Result<Response, ApiError> {
    let replaces_hlc = match platform.reader().await {
        Ok(pool) => closure::get(&pool, day.trim()).await.ok().flatten().map(|current| current.hlc).unwrap_or(0),
        Err(_) => 0,
    };
    let payload = ClosurePayload::parse(&day, body.closed, &body.reason, replaces_hlc)?;
    platform.observe(rananeeti_platform::Hlc(replaces_hlc));
    let submitted = platform
        .submit(
            NewCommand {
                kind: closure::KIND_SET_CLOSURE,
                id: payload.id(),
                payload: serde_json::to_value(&payload).expect("a closure serializes"),
            },
            SubmitOptions::delivered(delivery(&security, &headers)),
        )
        .await
        .map_err(ApiError::from)?;
    Ok(submitted_response(submitted, json!({})))
}

async fn show_closure(
    State(platform): State<Arc<Platform>>,
    Path(day): Path<String>,
) -> Result<Json<closure::Closure>, ApiError> {
    let day = ClosurePayload::parse(&day, false, "", 0)?.day;
    let pool = platform.reader().await.map_err(|error| ApiError::Unavailable(error.to_string()))?;
    match closure::get(&pool, &day).await {
        Ok(Some(closure)) => Ok(Json(closure)),
        Ok(None) => Err(ApiError::NotFound),
        Err(error) => Err(ApiError::Unavailable(error.to_string())),
    }
}
