//! The cafe's web pages: book a table, follow a booking until it is confirmed, list bookings.
//! Server-rendered and complete without JavaScript; the script only updates a pending booking in
//! place instead of reloading the page.

use crate::api::simulates_store_failure;
use crate::domain::{
    FieldError, Name, Notes, PartySize, ReservationRequest, SlotTime, NAME_CHARS_MAX, NOTES_CHARS_MAX, PARTY_SIZE_MAX,
};
use crate::service::{self, ReservationView, PAGE_ITEMS_DEFAULT};
use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use rananeeti_node::csrf::{self, CsrfKey};
use rananeeti_node::pages::{asset_response, assets_digest, page_headers, Asset};
use rananeeti_node::security::{peer_of, Security, ADMIN_COOKIE};
use rananeeti_platform::{CommandId, CommandState, Delivery, Outcome, Platform, SubmitError};
use std::sync::Arc;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime, PrimitiveDateTime, Time};

pub fn router(platform: Arc<Platform>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/cafe") }))
        .route("/cafe", get(booking_page))
        .route("/cafe/reservations", get(list_page).post(place_reservation))
        .route("/cafe/reservations/{id}", get(status_page))
        .route("/cafe/staff/signin", post(staff_signin))
        .route("/cafe/staff/signout", post(staff_signout))
        .route("/cafe/{*rest}", get(not_found_page))
        .route("/static/cafe/cafe.css", get(|| async { asset_response(&CSS) }))
        .route("/static/cafe/cafe.js", get(|| async { asset_response(&JS) }))
        .route("/static/cafe/logo.svg", get(|| async { asset_response(&LOGO) }))
        .route("/static/cafe/{*rest}", get(not_found_page))
        .with_state(platform)
}

// ---------------------------------------------------------------------------------------------
// Static files, compiled into the binary.

const CSS: Asset = Asset { body: include_bytes!("../static/cafe.css"), content_type: "text/css; charset=utf-8" };
const JS: Asset = Asset { body: include_bytes!("../static/cafe.js"), content_type: "text/javascript; charset=utf-8" };
const LOGO: Asset = Asset { body: include_bytes!("../static/logo.svg"), content_type: "image/svg+xml" };
const ASSETS_DIGEST: u64 = assets_digest(&[&CSS, &JS, &LOGO]);

/// The `?v=` the templates append to static URLs.
pub(crate) fn asset_version() -> String {
    rananeeti_node::pages::asset_version(ASSETS_DIGEST)
}

// ---------------------------------------------------------------------------------------------
// Rendering and error pages.

/// A rendered page with the headers every page carries (bookings hold people's names: never
/// stored by caches).
fn page(status: StatusCode, template: &impl Template) -> Response {
    let mut response = match template.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(error) => {
            tracing::error!(%error, "page template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal error: the page could not be rendered.").into_response()
        }
    };
    page_headers(&mut response);
    response
}

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Set by the node's request-id layer; shown on 5xx pages so a report can be matched to the log.
fn request_id(headers: &HeaderMap) -> String {
    headers.get(REQUEST_ID_HEADER).and_then(|value| value.to_str().ok()).unwrap_or("-").to_string()
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    title: &'static str,
    heading: &'static str,
    message: String,
    status: u16,
    request_id: Option<String>,
}

/// What went wrong, as the person is told; details go to the log.
#[derive(Debug)]
enum PageError {
    NotFound,
    BadRequest(String),
    /// The store cannot be read and nothing else holds what was asked for.
    Unavailable {
        request_id: String,
    },
    Internal {
        request_id: String,
    },
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, template) = match self {
            PageError::NotFound => (
                StatusCode::NOT_FOUND,
                ErrorPage {
                    title: "Not found",
                    heading: "We couldn't find that page",
                    message: "The link may be mistyped, or the booking may have been made at another of our \
                              tables. Try the list of reservations, or book a new table."
                        .to_string(),
                    status: 404,
                    request_id: None,
                },
            ),
            PageError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                ErrorPage {
                    title: "Bad request",
                    heading: "That link doesn't look right",
                    message,
                    status: 400,
                    request_id: None,
                },
            ),
            PageError::Unavailable { request_id } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorPage {
                    title: "Temporarily unavailable",
                    heading: "Our booking book is out of reach for a moment",
                    message: "We can't read reservations right now. Bookings you have made are safe: they are \
                              confirmed as soon as our database is back. Please try again in a minute."
                        .to_string(),
                    status: 503,
                    request_id: Some(request_id),
                },
            ),
            PageError::Internal { request_id } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorPage {
                    title: "Something went wrong",
                    heading: "Something went wrong on our side",
                    message: "Sorry, we could not finish that. Please try again; if it keeps happening, tell us \
                              the reference below."
                        .to_string(),
                    status: 500,
                    request_id: Some(request_id),
                },
            ),
        };
        let mut response = page(status, &template);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

async fn not_found_page() -> PageError {
    PageError::NotFound
}

// ---------------------------------------------------------------------------------------------
// The booking form.

/// The form as posted: every field a string, so that nothing the browser sends is refused before
/// it can be shown back with a message.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct ReservationForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub party_size: String,
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub notes: String,
    /// Present (any value) when the "Simulate database failure" box is ticked.
    #[serde(default)]
    pub simulate_failure: Option<String>,
    /// The form's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

impl ReservationForm {
    fn simulates_failure(&self) -> bool {
        self.simulate_failure.is_some()
    }
}

/// A problem with one field of the form, named as the form names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormError {
    pub field: &'static str,
    pub message: String,
}

impl FormError {
    fn new(field: &'static str, message: impl Into<String>) -> FormError {
        FormError { field, message: message.into() }
    }
}

fn first_upper(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The party size as typed; the range is the domain's rule.
pub fn parse_party_size(raw: &str) -> Result<i64, FormError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(FormError::new("party_size", "choose how many people are coming"));
    }
    raw.parse::<i64>().map_err(|_| {
        FormError::new("party_size", format!("a party is a whole number of people, 1 to {PARTY_SIZE_MAX}"))
    })
}

/// The form's date (`YYYY-MM-DD`) and time (`HH:MM`, seconds allowed and dropped) as the
/// domain's `YYYY-MM-DDTHH:MM`. A `time` that already holds both, with no date, is taken as is.
pub fn combine_date_time(date: &str, time: &str) -> Result<String, FormError> {
    let (date, time) = (date.trim(), time.trim());
    if date.is_empty() && time.contains('T') {
        return match time.split_once('T') {
            Some((date, time)) if !date.is_empty() => combine_date_time(date, time),
            _ => Err(FormError::new("date", "choose a date")),
        };
    }
    if date.is_empty() {
        return Err(FormError::new("date", "choose a date"));
    }
    let date =
        parse_date(date).ok_or_else(|| FormError::new("date", "a real date as YYYY-MM-DD, for example 2030-06-01"))?;
    if time.is_empty() {
        return Err(FormError::new("time", "choose a time"));
    }
    let time = Time::parse(time, format_description!("[hour]:[minute]"))
        .or_else(|_| Time::parse(time, format_description!("[hour]:[minute]:[second]")))
        .map_err(|_| FormError::new("time", "a time as HH:MM on the 24-hour clock, for example 19:30"))?;
    let combined = PrimitiveDateTime::new(date, time);
    Ok(combined.format(format_description!("[year]-[month]-[day]T[hour]:[minute]")).expect("a date and time format"))
}

fn parse_date(raw: &str) -> Option<Date> {
    Date::parse(raw.trim(), format_description!("[year]-[month]-[day]")).ok()
}

/// The domain checks date and time together; the form shows its message next to the input at
/// fault: the date when that day alone is out of range, else the time.
fn from_domain(error: FieldError, form: &ReservationForm, now: OffsetDateTime) -> FormError {
    let field = match error.field {
        "name" => "name",
        "party_size" => "party_size",
        "notes" => "notes",
        "time" => match parse_date(&form.date) {
            Some(date) if date < now.date() => {
                return FormError::new("date", "that day has passed; choose today or a later day");
            }
            Some(date) if date.year() > now.year() + 2 => "date",
            _ => "time",
        },
        _ => "form",
    };
    FormError { field, message: error.message }
}

/// Every field checked, so a person sees all that needs fixing at once, in form order.
pub fn parse_form(form: &ReservationForm, now: OffsetDateTime) -> Result<ReservationRequest, Vec<FormError>> {
    let mut errors = Vec::new();
    if let Err(error) = Name::parse(&form.name) {
        errors.push(from_domain(error, form, now));
    }
    match parse_party_size(&form.party_size) {
        Ok(party_size) => {
            if let Err(error) = PartySize::parse(party_size) {
                errors.push(from_domain(error, form, now));
            }
        }
        Err(error) => errors.push(error),
    }
    let slot = combine_date_time(&form.date, &form.time);
    match &slot {
        Ok(slot) => {
            if let Err(error) = SlotTime::parse(slot, now) {
                errors.push(from_domain(error, form, now));
            }
        }
        Err(error) => errors.push(error.clone()),
    }
    if let Err(error) = Notes::parse(Some(&form.notes)) {
        errors.push(from_domain(error, form, now));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let party_size = parse_party_size(&form.party_size).map_err(|error| vec![error])?;
    let slot = slot.map_err(|error| vec![error])?;
    ReservationRequest::parse(&form.name, party_size, &slot, Some(&form.notes), now)
        .map_err(|error| vec![from_domain(error, form, now)])
}

pub struct PartyOption {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "book.html")]
struct BookingPage {
    form: ReservationForm,
    errors: Vec<FormError>,
    /// A problem with the booking as a whole (the form could not be read, or nothing could take it).
    form_error: Option<String>,
    party_options: Vec<PartyOption>,
    date_min: String,
    date_max: String,
    name_chars_max: usize,
    notes_chars_max: usize,
    /// This rendering's idempotency key: the form sent twice is one booking.
    form_key: String,
    /// The visitor's CSRF token.
    csrf: String,
    /// Whether the demo's "simulate database failure" box is shown (`node.demo`).
    demo: bool,
}

impl BookingPage {
    fn new(form: ReservationForm, errors: Vec<FormError>, form_error: Option<String>, now: OffsetDateTime) -> Self {
        let chosen = form.party_size.trim().to_string();
        let party_options = (1..=PARTY_SIZE_MAX)
            .map(|size| PartyOption {
                value: size.to_string(),
                label: party_label(size),
                selected: chosen == size.to_string(),
            })
            .collect();
        let date_format = format_description!("[year]-[month]-[day]");
        let last_day = Date::from_calendar_date(now.year() + 2, time::Month::December, 31).unwrap_or(now.date());
        let errors =
            errors.into_iter().map(|error| FormError { message: first_upper(&error.message), ..error }).collect();
        BookingPage {
            form,
            errors,
            form_error,
            party_options,
            date_min: now.date().format(date_format).unwrap_or_default(),
            date_max: last_day.format(date_format).unwrap_or_default(),
            name_chars_max: NAME_CHARS_MAX,
            notes_chars_max: NOTES_CHARS_MAX,
            form_key: rananeeti_node::pages::form_key(),
            csrf: String::new(),
            demo: false,
        }
    }

    fn for_visitor(self, visitor: &Visitor, security: &Security) -> Self {
        BookingPage { csrf: visitor.csrf_token(), demo: security.config.demo, ..self }
    }

    /// The message for one field, if it has one.
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors.iter().find(|error| error.field == field).map(|error| error.message.as_str())
    }

    /// The date and time share one message line under the pair.
    fn when_error(&self) -> Option<&FormError> {
        self.errors.iter().find(|error| error.field == "date" || error.field == "time")
    }

    fn party_chosen(&self) -> bool {
        self.party_options.iter().any(|option| option.selected)
    }

    fn has_problems(&self) -> bool {
        !self.errors.is_empty() || self.form_error.is_some()
    }
}

/// What a new visitor sees: tomorrow evening for two.
fn blank_form(now: OffsetDateTime) -> ReservationForm {
    let tomorrow = now.date() + Duration::days(1);
    ReservationForm {
        party_size: "2".to_string(),
        date: tomorrow.format(format_description!("[year]-[month]-[day]")).unwrap_or_default(),
        time: "19:00".to_string(),
        ..ReservationForm::default()
    }
}

// ---------------------------------------------------------------------------------------------
// CSRF and the staff's page session.

const CSRF_COOKIE: &str = "cafe_csrf";

/// The visitor as the cafe's forms see them: their CSRF cookie (new when they had none), whether
/// the admin's page session is theirs, and whether cookies get `Secure`.
struct Visitor {
    csrf_cookie: String,
    csrf_cookie_is_new: bool,
    csrf_key: CsrfKey,
    cross_site: bool,
    secure: bool,
    staff: Option<rananeeti_node::session::Claims>,
    address: Option<std::net::IpAddr>,
}

impl Visitor {
    async fn of(
        platform: &Platform,
        security: &Security,
        headers: &HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> Visitor {
        let existing = csrf::cookie(headers, CSRF_COOKIE).filter(|value| csrf::is_cookie_value(value));
        let staff = match csrf::cookie(headers, ADMIN_COOKIE) {
            Some(value) => security.admin_session(platform, value).await,
            None => None,
        };
        Visitor {
            csrf_cookie_is_new: existing.is_none(),
            csrf_cookie: existing.map(str::to_string).unwrap_or_else(csrf::new_cookie_value),
            csrf_key: CsrfKey::new(security.derived_key(b"rananeeti cafe csrf key v1")),
            cross_site: csrf::is_cross_site(headers),
            secure: security.is_https(headers, peer),
            staff,
            address: security.client_address(headers, peer),
        }
    }

    fn csrf_token(&self) -> String {
        self.csrf_key.token(&self.csrf_cookie, &[])
    }

    /// A form is taken only with the token of the visitor's own cookie, from our own pages.
    fn csrf_holds(&self, presented: &str) -> bool {
        !self.csrf_cookie_is_new && !self.cross_site && self.csrf_key.matches(&self.csrf_cookie, &[], presented)
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age_seconds: u64, same_site: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path={path}; Max-Age={max_age_seconds}; SameSite={same_site}; HttpOnly{secure}"
        ))
        .expect("cookie values are header-safe")
    }

    /// Adds the visitor's new CSRF cookie, if they had none, to a response.
    fn finish(&self, mut response: Response) -> Response {
        if self.csrf_cookie_is_new {
            let cookie = self.cookie(CSRF_COOKIE, &self.csrf_cookie, "/cafe", csrf::COOKIE_MAX_AGE_SECONDS, "Lax");
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        response
    }
}

/// The parts of a request the pages read who is visiting from.
struct Visit(HeaderMap, Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Visit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Visit(parts.headers.clone(), peer_of(&parts.extensions)))
    }
}

async fn booking_page(
    State(platform): State<Arc<Platform>>,
    Extension(security): Extension<Security>,
    Visit(headers, peer): Visit,
) -> Response {
    let visitor = Visitor::of(&platform, &security, &headers, peer).await;
    let now = OffsetDateTime::now_utc();
    let booking = BookingPage::new(blank_form(now), Vec::new(), None, now).for_visitor(&visitor, &security);
    visitor.finish(page(StatusCode::OK, &booking))
}

#[tracing::instrument(skip_all, fields(simulate_store_failure))]
async fn place_reservation(
    State(platform): State<Arc<Platform>>,
    Extension(security): Extension<Security>,
    Visit(headers, peer): Visit,
    form: Result<Form<ReservationForm>, FormRejection>,
) -> Result<Response, PageError> {
    let visitor = Visitor::of(&platform, &security, &headers, peer).await;
    let result = place(&platform, &security, &visitor, &headers, form).await;
    result.map(|response| visitor.finish(response))
}

async fn place(
    platform: &Platform,
    security: &Security,
    visitor: &Visitor,
    headers: &HeaderMap,
    form: Result<Form<ReservationForm>, FormRejection>,
) -> Result<Response, PageError> {
    let now = OffsetDateTime::now_utc();
    let booking_page =
        |form, errors, message| BookingPage::new(form, errors, message, now).for_visitor(visitor, security);
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => {
            tracing::info!(rejection = %rejection.body_text(), "booking form could not be read");
            let message = "We could not read the form. Please fill it in and send it again.".to_string();
            return Ok(page(StatusCode::BAD_REQUEST, &booking_page(blank_form(now), Vec::new(), Some(message))));
        }
    };
    if !visitor.csrf_holds(&form.csrf) {
        tracing::info!(cross_site = visitor.cross_site, "booking form refused: CSRF check failed");
        let message = "For your safety we only take this form from our own booking page, opened in this browser. \
                       Check your booking below and send it again. (Cookies must be on.)"
            .to_string();
        return Ok(page(StatusCode::FORBIDDEN, &booking_page(form, Vec::new(), Some(message))));
    }
    let request = match parse_form(&form, now) {
        Ok(request) => request,
        Err(errors) => return Ok(page(StatusCode::UNPROCESSABLE_ENTITY, &booking_page(form, errors, None))),
    };
    // The checkbox and the header are demo switches: only with `node.demo`.
    let simulate_store_failure =
        (security.config.demo && form.simulates_failure()) || simulates_store_failure(security, headers);
    tracing::Span::current().record("simulate_store_failure", simulate_store_failure);
    let delivery = if simulate_store_failure { Delivery::SimulatedStoreFailure } else { Delivery::Store };
    match service::place(platform, &request, delivery).await {
        Ok(submitted) => {
            let placed = match submitted.outcome {
                Outcome::Committed => "committed",
                Outcome::Pending => "pending",
                Outcome::Duplicate { .. } => "duplicate",
                Outcome::Rejected { .. } => "rejected",
            };
            Ok(Redirect::to(&format!("/cafe/reservations/{}?placed={placed}", submitted.id.to_hex())).into_response())
        }
        Err(error @ (SubmitError::Queue(_) | SubmitError::QueueTimeout)) => {
            tracing::error!(%error, request_id = request_id(headers), "booking neither stored nor queued");
            let message = "We could not take your booking just now: neither our database nor our backup queue \
                           answered. Nothing was booked. Please send the form again in a moment."
                .to_string();
            let mut response = page(StatusCode::SERVICE_UNAVAILABLE, &booking_page(form, Vec::new(), Some(message)));
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            Ok(response)
        }
        Err(error) => {
            let request_id = request_id(headers);
            tracing::error!(%error, request_id, "booking failed");
            Err(PageError::Internal { request_id })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One reservation.

/// A reservation as the pages show it.
pub struct ReservationRow {
    pub id: String,
    pub url: String,
    pub name: String,
    pub party: String,
    pub slot: String,
    pub slot_long: String,
    pub slot_short: String,
    pub notes: String,
    /// committed, pending or rejected
    pub status: &'static str,
    pub status_label: String,
    pub reason: Option<String>,
    /// "store" or "queue"
    pub stored_in: &'static str,
    pub region: String,
    pub node: String,
    pub stored: String,
    pub stored_detail: String,
    pub placed_at: String,
    pub placed_at_human: String,
}

impl From<ReservationView> for ReservationRow {
    fn from(view: ReservationView) -> Self {
        let (stored, stored_detail) = match view.stored_in {
            "queue" => (
                format!("Queue on node {}", view.node),
                format!(
                    "Held safely in node {}'s queue (region {}) and written to the database as soon as it is back.",
                    view.node, view.region
                ),
            ),
            _ => (format!("Database, region {}", view.region), format!("Recorded by node {}.", view.node)),
        };
        ReservationRow {
            url: format!("/cafe/reservations/{}", view.id),
            party: party_label(view.party_size),
            slot_long: format_slot_long(&view.time),
            slot_short: format_slot_short(&view.time),
            status_label: status_label(view.status, view.reason.as_deref()),
            placed_at_human: format_placed_at(&view.placed_at),
            id: view.id,
            name: view.name,
            slot: view.time,
            notes: view.notes,
            status: view.status,
            reason: view.reason,
            stored_in: view.stored_in,
            region: view.region,
            node: view.node,
            stored,
            stored_detail,
            placed_at: view.placed_at,
        }
    }
}

pub fn party_label(size: i64) -> String {
    if size == 1 {
        "1 person".to_string()
    } else {
        format!("{size} people")
    }
}

pub fn status_label(status: &str, reason: Option<&str>) -> String {
    match (status, reason) {
        ("committed", _) => "Confirmed".to_string(),
        ("pending", _) => "Queued — pending".to_string(),
        ("rejected", Some(reason)) => format!("Rejected: {reason}"),
        ("rejected", None) => "Rejected".to_string(),
        (other, _) => first_upper(other),
    }
}

fn parse_slot(slot: &str) -> Option<PrimitiveDateTime> {
    PrimitiveDateTime::parse(slot, format_description!("[year]-[month]-[day]T[hour]:[minute]")).ok()
}

/// `2030-06-01T19:30` as "Saturday 1 June 2030 at 19:30"; anything else is shown as it is.
pub fn format_slot_long(slot: &str) -> String {
    parse_slot(slot)
        .and_then(|at| {
            at.format(format_description!("[weekday] [day padding:none] [month repr:long] [year] at [hour]:[minute]"))
                .ok()
        })
        .unwrap_or_else(|| slot.to_string())
}

/// `2030-06-01T19:30` as "Sat 1 Jun 2030, 19:30".
pub fn format_slot_short(slot: &str) -> String {
    parse_slot(slot)
        .and_then(|at| {
            at.format(format_description!(
                "[weekday repr:short] [day padding:none] [month repr:short] [year], [hour]:[minute]"
            ))
            .ok()
        })
        .unwrap_or_else(|| slot.to_string())
}

/// An RFC 3339 instant as "1 Jun 2030, 18:02:11 UTC".
pub fn format_placed_at(rfc3339: &str) -> String {
    OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|at| {
            at.to_offset(time::UtcOffset::UTC)
                .format(format_description!(
                    "[day padding:none] [month repr:short] [year], [hour]:[minute]:[second] UTC"
                ))
                .ok()
        })
        .unwrap_or_else(|| rfc3339.to_string())
}

/// The message shown after a booking form was sent: what the submit answered, brought up to date
/// with where the booking stands now (a queued booking may have been confirmed since).
pub struct Flash {
    pub placed: &'static str,
    pub tone: &'static str,
    pub heading: String,
    pub text: String,
}

pub fn flash(placed: &str, status: &str, reason: Option<&str>) -> Option<Flash> {
    let rejected = || Flash {
        placed: "rejected",
        tone: "rejected",
        heading: "Sorry, we could not book this table".to_string(),
        text: reason.map(first_upper).unwrap_or_else(|| "The booking was refused.".to_string()),
    };
    let flash = match (placed, status) {
        ("committed", _) => Flash {
            placed: "committed",
            tone: "committed",
            heading: "Your table is booked".to_string(),
            text: "We look forward to seeing you.".to_string(),
        },
        ("pending", "pending") => Flash {
            placed: "pending",
            tone: "pending",
            heading: "Received — queued while our database is unavailable".to_string(),
            text: "Your booking is safe with us. You can leave this page and come back to it.".to_string(),
        },
        ("pending", "committed") => Flash {
            placed: "pending",
            tone: "committed",
            heading: "Your table is booked".to_string(),
            text: "Received while our database was unavailable, and now confirmed.".to_string(),
        },
        ("pending", _) => Flash { placed: "pending", ..rejected() },
        ("duplicate", _) => Flash {
            placed: "duplicate",
            tone: "duplicate",
            heading: "Already placed — this booking was made before".to_string(),
            text: "Sending the same booking twice books one table; here is where it stands.".to_string(),
        },
        ("rejected", _) => rejected(),
        _ => return None,
    };
    Some(flash)
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    reservation: ReservationRow,
    flash: Option<Flash>,
    poll_url: String,
}

impl StatusPage {
    fn is_pending(&self) -> bool {
        self.reservation.status == "pending"
    }
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    placed: Option<String>,
}

async fn status_page(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let id = CommandId::parse_hex(&id).map_err(|_| {
        PageError::BadRequest(
            "A reservation number is 40 characters, 0-9 and a-f, as in the link you were given.".into(),
        )
    })?;
    let reservation = match service::get(&platform, &id).await {
        Ok(Some(reservation)) => reservation,
        Ok(None) => return Err(PageError::NotFound),
        Err(error) => {
            let request_id = request_id(&headers);
            tracing::warn!(%error, request_id, "reservation could not be read");
            return Err(PageError::Unavailable { request_id });
        }
    };
    let placed = query.ok().and_then(|Query(query)| query.placed).unwrap_or_default();
    let flash = flash(&placed, reservation.status, reservation.reason.as_deref());
    let poll_url = format!("/api/cafe/reservations/{}", reservation.id);
    Ok(page(StatusCode::OK, &StatusPage { reservation: reservation.into(), flash, poll_url }))
}

// ---------------------------------------------------------------------------------------------
// The list.

#[derive(Template)]
#[template(path = "list.html")]
struct ListPage {
    rows: Vec<ReservationRow>,
    older_url: Option<String>,
    is_first_page: bool,
    store_available: bool,
    any_pending: bool,
    csrf: String,
}

#[derive(Template)]
#[template(path = "staff.html")]
struct StaffSignInPage {
    csrf: String,
    error: Option<String>,
}

#[derive(serde::Deserialize)]
struct ListQuery {
    after: Option<String>,
}

/// Every booking, newest first: the staff's view (the admin's page session). Anyone else is
/// asked to sign in as staff; a guest follows their own booking on its page.
async fn list_page(
    State(platform): State<Arc<Platform>>,
    Extension(security): Extension<Security>,
    Visit(headers, peer): Visit,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let visitor = Visitor::of(&platform, &security, &headers, peer).await;
    if visitor.staff.is_none() {
        let signin = StaffSignInPage { csrf: visitor.csrf_token(), error: None };
        return Ok(visitor.finish(page(StatusCode::UNAUTHORIZED, &signin)));
    }
    let Query(query) = query.map_err(|_| PageError::BadRequest("That list link is not one of ours.".into()))?;
    let after = match query.after.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(cursor) => Some(cursor.parse::<u64>().map_err(|_| {
            PageError::BadRequest("That \"Older\" link is not one of ours: start again from the newest.".into())
        })?),
    };
    let listed = service::list(&platform, after, PAGE_ITEMS_DEFAULT).await;
    let rows: Vec<ReservationRow> = listed.items.into_iter().map(ReservationRow::from).collect();
    let any_pending = rows.iter().any(|row| row.status == CommandState::Pending.as_str());
    let list = ListPage {
        older_url: listed.next.map(|next| format!("/cafe/reservations?after={next}")),
        is_first_page: after.is_none(),
        store_available: listed.store_available,
        any_pending,
        rows,
        csrf: visitor.csrf_token(),
    };
    Ok(visitor.finish(page(StatusCode::OK, &list)))
}

#[derive(serde::Deserialize)]
struct StaffForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

/// The admin token, through the sign-in throttle, for an admin page session (the cookie holds
/// the session, never the token).
async fn staff_signin(
    State(platform): State<Arc<Platform>>,
    Extension(security): Extension<Security>,
    Visit(headers, peer): Visit,
    form: Result<Form<StaffForm>, FormRejection>,
) -> Response {
    let visitor = Visitor::of(&platform, &security, &headers, peer).await;
    let form = form.map(|Form(form)| form).unwrap_or(StaffForm { csrf: String::new(), token: String::new() });
    let refused = |status: StatusCode, message: &str| {
        let signin = StaffSignInPage { csrf: visitor.csrf_token(), error: Some(message.to_string()) };
        visitor.finish(page(status, &signin))
    };
    if !visitor.csrf_holds(&form.csrf) {
        return refused(StatusCode::FORBIDDEN, "This form has expired: send it again from this page.");
    }
    if let Err(locked) = security.sign_ins.check("admin", visitor.address) {
        let mut response = refused(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed sign-ins. Wait {} seconds before trying again.", locked.retry_after_seconds),
        );
        response.headers_mut().insert(header::RETRY_AFTER, locked.retry_after_seconds.into());
        return response;
    }
    if !security.is_admin_token(&form.token) {
        security.sign_ins.failed("admin", visitor.address);
        tracing::info!("staff sign-in refused");
        return refused(StatusCode::UNAUTHORIZED, "That is not this deployment's admin token.");
    }
    security.sign_ins.succeeded("admin");
    let (_, session) = security.issue_admin_session();
    let max_age = rananeeti_node::security::ADMIN_SESSION_LIFETIME.absolute_ms / 1000;
    let mut response = Redirect::to("/cafe/reservations").into_response();
    response.headers_mut().append(header::SET_COOKIE, visitor.cookie(ADMIN_COOKIE, &session, "/", max_age, "Strict"));
    visitor.finish(response)
}

async fn staff_signout(
    State(platform): State<Arc<Platform>>,
    Extension(security): Extension<Security>,
    Visit(headers, peer): Visit,
    form: Result<Form<StaffForm>, FormRejection>,
) -> Response {
    let visitor = Visitor::of(&platform, &security, &headers, peer).await;
    let form = form.map(|Form(form)| form).unwrap_or(StaffForm { csrf: String::new(), token: String::new() });
    if !visitor.csrf_holds(&form.csrf) {
        let signin = StaffSignInPage { csrf: visitor.csrf_token(), error: Some("This form has expired.".into()) };
        return visitor.finish(page(StatusCode::FORBIDDEN, &signin));
    }
    if let Some(claims) = &visitor.staff {
        security.end_admin_session(&platform, claims).await;
    }
    let mut response = Redirect::to("/cafe").into_response();
    response.headers_mut().append(header::SET_COOKIE, visitor.cookie(ADMIN_COOKIE, "", "/", 0, "Strict"));
    visitor.finish(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-23 17:00 UTC);

    fn form(name: &str, party_size: &str, date: &str, time: &str, notes: &str) -> ReservationForm {
        ReservationForm {
            name: name.into(),
            party_size: party_size.into(),
            date: date.into(),
            time: time.into(),
            notes: notes.into(),
            simulate_failure: None,
            csrf: String::new(),
        }
    }

    fn fields(result: Result<ReservationRequest, Vec<FormError>>) -> Vec<&'static str> {
        result.unwrap_err().into_iter().map(|error| error.field).collect()
    }

    #[test]
    fn combines_date_and_time_as_the_domain_reads_them() {
        assert_eq!(combine_date_time("2030-06-01", "19:30").unwrap(), "2030-06-01T19:30");
        assert_eq!(combine_date_time(" 2030-06-01 ", "09:05:00").unwrap(), "2030-06-01T09:05");
        assert_eq!(combine_date_time("", "2030-06-01T19:30").unwrap(), "2030-06-01T19:30");
        assert_eq!(combine_date_time("", "19:30").unwrap_err().field, "date");
        assert_eq!(combine_date_time("2030-02-30", "19:30").unwrap_err().field, "date");
        assert_eq!(combine_date_time("01/06/2030", "19:30").unwrap_err().field, "date");
        assert_eq!(combine_date_time("2030-06-01", "").unwrap_err().field, "time");
        assert_eq!(combine_date_time("2030-06-01", "25:00").unwrap_err().field, "time");
        assert_eq!(combine_date_time("2030-06-01", "7pm").unwrap_err().field, "time");
    }

    #[test]
    fn formats_dates_for_people() {
        assert_eq!(format_slot_long("2030-06-01T19:30"), "Saturday 1 June 2030 at 19:30");
        assert_eq!(format_slot_short("2030-06-01T09:05"), "Sat 1 Jun 2030, 09:05");
        assert_eq!(format_slot_long("not a time"), "not a time");
        assert_eq!(format_placed_at("2030-06-01T18:02:11.123Z"), "1 Jun 2030, 18:02:11 UTC");
        assert_eq!(format_placed_at("2030-06-01T20:02:11+02:00"), "1 Jun 2030, 18:02:11 UTC");
        assert_eq!(format_placed_at(""), "");
        assert_eq!(party_label(1), "1 person");
        assert_eq!(party_label(4), "4 people");
    }

    #[test]
    fn a_good_form_becomes_the_same_request_as_the_api_would_make() {
        let request = parse_form(&form(" Ann ", " 4 ", "2027-01-01", "19:30", "window"), NOW).unwrap();
        let expected = ReservationRequest::parse("Ann", 4, "2027-01-01T19:30", Some("window"), NOW).unwrap();
        assert_eq!(request, expected);
        assert_eq!(request.id(), expected.id());
    }

    #[test]
    fn reports_every_bad_field_in_form_order() {
        assert_eq!(
            fields(parse_form(&form("", "many", "", "", &"n".repeat(201)), NOW)),
            ["name", "party_size", "date", "notes"]
        );
        assert_eq!(fields(parse_form(&form("Ann", "", "2027-01-01", "19:30", ""), NOW)), ["party_size"]);
        assert_eq!(fields(parse_form(&form("Ann", "0", "2027-01-01", "19:30", ""), NOW)), ["party_size"]);
        assert_eq!(fields(parse_form(&form("Ann", "21", "2027-01-01", "19:30", ""), NOW)), ["party_size"]);
        assert_eq!(fields(parse_form(&form("Ann", "2.5", "2027-01-01", "19:30", ""), NOW)), ["party_size"]);
        assert_eq!(fields(parse_form(&form("Ann", "2", "2027-01-01", "", ""), NOW)), ["time"]);
        assert_eq!(fields(parse_form(&form(&"x".repeat(41), "2", "2027-01-01", "19:30", ""), NOW)), ["name"]);
    }

    #[test]
    fn a_time_in_the_past_is_blamed_on_the_input_at_fault() {
        // Today, an hour ago: the day is fine, the time is not.
        assert_eq!(fields(parse_form(&form("Ann", "2", "2026-11-23", "16:00", ""), NOW)), ["time"]);
        // Yesterday, or too far ahead: the day itself is out of range.
        let yesterday = parse_form(&form("Ann", "2", "2026-11-22", "19:00", ""), NOW).unwrap_err();
        assert_eq!(
            (yesterday[0].field, yesterday[0].message.as_str()),
            ("date", "that day has passed; choose today or a later day")
        );
        assert_eq!(fields(parse_form(&form("Ann", "2", "2029-01-01", "19:00", ""), NOW)), ["date"]);
        assert!(parse_form(&form("Ann", "2", "2026-11-23", "17:00", ""), NOW).is_ok());
    }

    #[test]
    fn the_flash_follows_the_booking_once_it_is_confirmed() {
        let heading = |placed, status, reason| flash(placed, status, reason).map(|flash| flash.heading);
        assert_eq!(heading("committed", "committed", None).unwrap(), "Your table is booked");
        assert!(heading("pending", "pending", None).unwrap().starts_with("Received — queued"));
        assert_eq!(heading("pending", "committed", None).unwrap(), "Your table is booked");
        assert_eq!(heading("duplicate", "committed", None).unwrap(), "Already placed — this booking was made before");
        let rejected = flash("pending", "rejected", Some("fully booked at 2030-06-01 19:30")).unwrap();
        assert_eq!((rejected.tone, rejected.text.as_str()), ("rejected", "Fully booked at 2030-06-01 19:30"));
        assert!(heading("something else", "committed", None).is_none());
        assert_eq!(status_label("rejected", Some("fully booked")), "Rejected: fully booked");
        assert_eq!(status_label("pending", None), "Queued — pending");
    }

    fn view(status: &'static str, stored_in: &'static str, reason: Option<&str>) -> ReservationView {
        ReservationView {
            id: "a6129e5c96440d04d1be4b81c25e580e0d348934".into(),
            name: "Ann <b>&".into(),
            party_size: 4,
            time: "2027-06-01T19:30".into(),
            notes: "window \"seat\"".into(),
            status,
            reason: reason.map(str::to_string),
            region: "eu".into(),
            stored_in,
            node: "eu-1".into(),
            placed_at: "2026-11-23T17:28:37.411Z".into(),
            hlc: 1,
        }
    }

    fn status_page(view: ReservationView, placed: &str) -> String {
        let flash = flash(placed, view.status, view.reason.as_deref());
        let poll_url = format!("/api/cafe/reservations/{}", view.id);
        StatusPage { reservation: view.into(), flash, poll_url }.render().unwrap()
    }

    #[test]
    fn a_pending_booking_page_refreshes_itself_and_a_settled_one_does_not() {
        let pending = status_page(view("pending", "queue", None), "pending");
        assert!(pending.contains(r#"<meta http-equiv="refresh" content="2">"#));
        assert!(pending.contains(r#"data-status="pending""#));
        assert!(pending.contains(r#"data-poll-url="/api/cafe/reservations/a6129e5c96440d04d1be4b81c25e580e0d348934""#));
        assert!(pending.contains(r#"data-stored-in="queue""#));
        assert!(pending.contains("Received — queued while our database is unavailable"));
        assert!(pending.contains("Tuesday 1 June 2027 at 19:30"));

        let committed = status_page(view("committed", "store", None), "pending");
        assert!(!committed.contains("http-equiv=\"refresh\""));
        assert!(!committed.contains("data-poll-url"));
        assert!(committed.contains(r#"data-status="committed""#));
        assert!(committed.contains("Your table is booked"));

        let rejected = status_page(view("rejected", "store", Some("fully booked")), "rejected");
        assert!(rejected.contains(r#"data-status="rejected">Rejected: fully booked<"#));
    }

    #[test]
    fn what_people_typed_is_escaped() {
        let page = status_page(view("committed", "store", None), "committed");
        assert!(page.contains("Ann &#60;b&#62;&#38;"));
        assert!(!page.contains("Ann <b>"));
        let form = form("<script>", "2", "2027-06-01", "19:30", "</textarea><b>");
        let page = BookingPage::new(form, Vec::new(), None, NOW).render().unwrap();
        assert!(!page.contains("<script>") && !page.contains("</textarea><b>"));
    }

    #[test]
    fn a_refused_form_keeps_the_input_and_links_each_message_to_its_field() {
        let typed = ReservationForm {
            simulate_failure: Some("on".into()),
            ..form("", "7", "2026-11-22", "19:00", "high chair")
        };
        let errors = parse_form(&typed, NOW).unwrap_err();
        let demo = BookingPage { demo: true, ..BookingPage::new(typed.clone(), errors.clone(), None, NOW) };
        let page = demo.render().unwrap();
        assert!(page.contains(r#"id="reservation-form""#));
        assert!(page.contains(r#"<p class="field-error" id="name-error" data-field="name">"#));
        assert!(page.contains(r#"aria-describedby="name-hint name-error" aria-invalid="true""#));
        assert!(page.contains(r#"<p class="field-error" id="date-error" data-field="date">"#));
        assert!(page.contains(r#"aria-describedby="when-hint date-error" aria-invalid="true""#));
        assert!(page.contains(r#"<option value="7" selected>7 people</option>"#));
        assert!(page.contains(r#"value="2026-11-22""#) && page.contains(r#"value="19:00""#));
        assert!(page.contains(">high chair</textarea>"));
        assert!(page.contains(r#"name="simulate_failure" type="checkbox" value="on" checked"#));
        assert!(!page.contains(r#"data-field="party_size""#));
        let production = BookingPage::new(typed, errors, None, NOW).render().unwrap();
        assert!(!production.contains("simulate_failure"), "the demo's box only with node.demo");
    }
}
