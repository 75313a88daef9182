//! What the cafe's pages and API share: placing a reservation and reading reservations back,
//! all through the platform.

use crate::domain::{ReservationPayload, ReservationRequest, KIND_RESERVE};
use rananeeti_platform::{
    CommandId, CommandState, CommandStatus, Delivery, NewCommand, Platform, StoreUnavailable, SubmitError,
    SubmitOptions, Submitted,
};

/// Places a reservation: committed, pending (queued), duplicate or rejected, within the budget.
pub async fn place(
    platform: &Platform,
    request: &ReservationRequest,
    delivery: Delivery,
) -> Result<Submitted, SubmitError> {
    let payload = serde_json::to_value(request.payload()).expect("a reservation serializes");
    platform
        .submit(NewCommand { kind: KIND_RESERVE, id: request.id(), payload }, SubmitOptions::delivered(delivery))
        .await
}

/// A reservation as the pages and the API show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReservationView {
    pub id: String,
    pub name: String,
    pub party_size: i64,
    pub time: String,
    pub notes: String,
    /// committed, pending or rejected
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The region whose store holds it (or will, once drained).
    pub region: String,
    /// "store" or "queue"
    pub stored_in: &'static str,
    pub node: String,
    /// When it was placed, as RFC 3339 UTC (from the command's clock).
    pub placed_at: String,
    #[serde(skip)]
    pub hlc: u64,
}

impl ReservationView {
    fn from_status(status: CommandStatus) -> Option<ReservationView> {
        if status.kind != KIND_RESERVE {
            return None;
        }
        let payload: ReservationPayload = serde_json::from_value(status.payload).ok()?;
        let reason = match &status.state {
            CommandState::Rejected { reason } => Some(reason.clone()),
            _ => None,
        };
        let placed_at_ms = (status.hlc >> 16) as i128;
        let placed_at = time::OffsetDateTime::from_unix_timestamp_nanos(placed_at_ms * 1_000_000)
            .ok()
            .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        Some(ReservationView {
            id: status.id.to_hex(),
            name: payload.name,
            party_size: payload.party_size,
            time: payload.time,
            notes: payload.notes,
            status: status.state.as_str(),
            reason,
            region: status.region,
            stored_in: status.stored_in,
            node: status.node,
            placed_at,
            hlc: status.hlc,
        })
    }

    pub fn is_pending(&self) -> bool {
        self.status == "pending"
    }
}

/// One reservation by id, wherever it is held. `Err` when the store cannot be asked and this
/// node's queue does not hold it.
pub async fn get(platform: &Platform, id: &CommandId) -> Result<Option<ReservationView>, StoreUnavailable> {
    Ok(platform.status(id).await?.and_then(ReservationView::from_status))
}

pub const PAGE_ITEMS_DEFAULT: usize = 20;
pub const PAGE_ITEMS_MAX: usize = 100;
const PENDING_LISTED_MAX: usize = 1000;

/// A page of reservations, newest first.
#[derive(Debug, serde::Serialize)]
pub struct Page {
    pub items: Vec<ReservationView>,
    /// Cursor for the next page (`after=`), absent on the last page.
    pub next: Option<String>,
    /// False when the store could not be read: `items` then holds only queued reservations.
    pub store_available: bool,
}

/// Newest first. The first page also carries the reservations still waiting in this node's queue.
pub async fn list(platform: &Platform, after: Option<u64>, limit: usize) -> Page {
    let limit = limit.clamp(1, PAGE_ITEMS_MAX);
    let mut items: Vec<ReservationView> = Vec::new();
    if after.is_none() {
        match platform.pending(KIND_RESERVE, PENDING_LISTED_MAX) {
            Ok(pending) => items.extend(pending.into_iter().filter_map(ReservationView::from_status)),
            Err(error) => tracing::error!(%error, "could not list the fallback queue"),
        }
    }
    let (recorded, store_available) = match platform.list_recorded(KIND_RESERVE, after, limit + 1).await {
        Ok(recorded) => (recorded, true),
        Err(error) => {
            tracing::warn!(%error, "reservations listed from the queue only");
            (Vec::new(), false)
        }
    };
    let has_more = recorded.len() > limit;
    let recorded: Vec<ReservationView> =
        recorded.into_iter().take(limit).filter_map(ReservationView::from_status).collect();
    let next = if has_more { recorded.last().map(|last| last.hlc.to_string()) } else { None };
    // A queued command may have been drained between the two reads: show it once, as recorded.
    items.retain(|pending| !recorded.iter().any(|stored| stored.id == pending.id));
    items.extend(recorded);
    items.sort_by_key(|item| std::cmp::Reverse(item.hlc));
    Page { items, next, store_available }
}
