//! The checker: every acknowledged write looked up in every region's database (its command
//! record in `rn_commands` and its rows in the app's tables), counters recounted from the rows
//! they count, and whatever is still queued on a node. It only reads.

use crate::deployment::{Database, Deployment};
use crate::workload::{Ack, Effect, Recorded};
use crate::DrillError;
use rananeeti_platform::sqlx::{self, AnyConnection, Connection, Row};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// Values bound in one `IN (...)` list.
const IN_LIST_MAX: usize = 400;
/// Writes listed by id in the report, per list (the counts are always whole).
pub(crate) const LISTED_MAX: usize = 50;
/// Longest the checker waits to connect to a database.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(database: &Database) -> Result<AnyConnection, DrillError> {
    sqlx::any::install_default_drivers();
    let url = database.read_url()?;
    match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect(&url)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(DrillError::Check(format!("opening region {}'s database: {error}", database.region))),
        Err(_) => Err(DrillError::Check(format!("opening region {}'s database timed out", database.region))),
    }
}

fn sql_error(region: &str, what: &str) -> impl Fn(sqlx::Error) -> DrillError {
    let (region, what) = (region.to_string(), what.to_string());
    move |error| DrillError::Check(format!("region {region}: {what}: {error}"))
}

fn placeholders(count: usize) -> String {
    (1..=count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// `(key, count)` rows of `sql` (which has `{in}` where the list goes) for every value, chunked.
async fn counts_in(
    connection: &mut AnyConnection,
    region: &str,
    sql: &str,
    values: &[String],
) -> Result<HashMap<String, i64>, DrillError> {
    let mut counts = HashMap::new();
    for chunk in values.chunks(IN_LIST_MAX) {
        let query_text = sql.replace("{in}", &placeholders(chunk.len()));
        let mut query = sqlx::query(&query_text);
        for value in chunk {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&mut *connection).await.map_err(sql_error(region, sql))?;
        for row in rows {
            let key: String = row.try_get(0).map_err(sql_error(region, sql))?;
            let count: i64 = row.try_get(1).map_err(sql_error(region, sql))?;
            counts.insert(key, count);
        }
    }
    Ok(counts)
}

/// `(key, value)` pairs of a two-column query without parameters.
async fn pairs(connection: &mut AnyConnection, region: &str, sql: &str) -> Result<HashMap<String, i64>, DrillError> {
    let rows = sqlx::query(sql).fetch_all(&mut *connection).await.map_err(sql_error(region, sql))?;
    rows.iter()
        .map(|row| {
            Ok((row.try_get(0).map_err(sql_error(region, sql))?, row.try_get(1).map_err(sql_error(region, sql))?))
        })
        .collect()
}

/// Per book, in each region: stock and copies in order lines, before the load (the stock's
/// recount is a difference: what the stock lost equals what the order lines gained).
#[derive(Clone, Debug, Default)]
pub(crate) struct StockSnapshot {
    regions: BTreeMap<String, HashMap<String, (i64, i64)>>,
}

async fn stock_and_lines(
    connection: &mut AnyConnection,
    region: &str,
) -> Result<HashMap<String, (i64, i64)>, DrillError> {
    let stock = pairs(connection, region, "SELECT id, stock FROM bs_books").await?;
    let lines = pairs(
        connection,
        region,
        "SELECT book_id, CAST(SUM(quantity) AS BIGINT) AS copies FROM bs_order_lines GROUP BY book_id",
    )
    .await?;
    Ok(stock.into_iter().map(|(book, stock)| (book.clone(), (stock, lines.get(&book).copied().unwrap_or(0)))).collect())
}

pub(crate) async fn stock_snapshot(deployment: &Deployment) -> Result<StockSnapshot, DrillError> {
    let mut regions = BTreeMap::new();
    for region in &deployment.regions {
        let mut connection = connect(&region.database).await?;
        regions.insert(region.name.clone(), stock_and_lines(&mut connection, &region.name).await?);
        let _ = connection.close().await;
    }
    Ok(StockSnapshot { regions })
}

/// Whether every region has applied every other region's outbox: each peer's checkpoint is at
/// the newest seq of the region's outbox.
pub(crate) async fn replication_caught_up(deployment: &Deployment) -> Result<bool, DrillError> {
    if deployment.regions.len() < 2 {
        return Ok(true);
    }
    let mut newest = HashMap::new();
    let mut checkpoints = HashMap::new();
    for region in &deployment.regions {
        let mut connection = connect(&region.database).await?;
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM rn_outbox")
            .fetch_one(&mut connection)
            .await
            .map_err(sql_error(&region.name, "reading the outbox"))?;
        newest.insert(region.name.clone(), row.try_get::<i64, _>(0).map_err(sql_error(&region.name, "outbox seq"))?);
        let rows = pairs(&mut connection, &region.name, "SELECT peer_region, seq FROM rn_checkpoints").await?;
        checkpoints.insert(region.name.clone(), rows);
        let _ = connection.close().await;
    }
    Ok(deployment.regions.iter().all(|region| {
        deployment.regions.iter().filter(|peer| peer.name != region.name).all(|peer| {
            let applied = checkpoints[&region.name].get(&peer.name).copied().unwrap_or(0);
            applied >= newest[&peer.name]
        })
    }))
}

/// An acknowledged write named in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WriteRef {
    pub id: String,
    pub kind: String,
    /// When it was acknowledged, since the load started (negative: while the drill set up).
    pub acknowledged_at_seconds: f64,
    /// What the answer said: committed, pending or duplicate.
    pub answered: String,
    /// The regions whose database does not hold it.
    pub missing_in: Vec<String>,
    /// What each of those lacks: its command record, or the app's row.
    pub why: Vec<String>,
}

/// Something applied twice, found by id, by content or by effect.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Duplicate {
    pub region: String,
    /// `id`: two rows with one id; `content`: two reservations with one drill note (the same
    /// write under two ids); `effect`: a counter that is not its recount (seats, stock, best
    /// sellers) or a cart or order line with more copies than the shopper added.
    pub found_by: &'static str,
    pub what: String,
}

/// Counts for one kind of write.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KindCounts {
    pub acknowledged: usize,
    pub committed: usize,
    pub rejected: usize,
    pub lost: usize,
    pub stuck: usize,
}

/// One region's share of the loss.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegionMissing {
    pub region: String,
    /// Acknowledged writes committed somewhere that this region's database does not hold.
    pub missing: usize,
    /// When the missing ones were acknowledged (seconds since the load started).
    pub window_seconds: Option<[f64; 2]>,
}

/// What the checker found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Checked {
    pub acknowledged: usize,
    pub committed: usize,
    /// Answered *pending*, then refused by a rule when applied (stock, a closed day): final.
    pub rejected: usize,
    /// Missing from at least one region's database (and queued nowhere).
    pub lost: usize,
    /// Applied twice: by id, by content and by effect, in any region.
    pub duplicated: usize,
    /// Still waiting in a node's queue, in no database.
    pub stuck: usize,
    pub by_kind: BTreeMap<String, KindCounts>,
    pub regions: Vec<RegionMissing>,
    pub lost_writes: Vec<WriteRef>,
    pub stuck_writes: Vec<WriteRef>,
    pub duplicates: Vec<Duplicate>,
}

/// What one region's database says about the run's writes.
#[derive(Default)]
struct RegionView {
    statuses: HashMap<String, String>,
    reservations: HashMap<String, i64>,
    orders: HashMap<String, i64>,
    users: HashMap<String, i64>,
}

/// Checks the run's acknowledged writes in every region. `queued` holds the ids waiting in any
/// node's queue after settling.
pub(crate) async fn check(
    deployment: &Deployment,
    recorded: &Recorded,
    origin: std::time::Instant,
    tag: &str,
    before: &StockSnapshot,
    queued: &HashSet<String>,
) -> Result<Checked, DrillError> {
    // One intent per id: a duplicate answer repeats an acknowledged write.
    let mut acks: BTreeMap<&str, &Ack> = BTreeMap::new();
    for ack in &recorded.acks {
        acks.entry(ack.id.as_str()).or_insert(ack);
    }
    let ids: Vec<String> = acks.keys().map(|id| id.to_string()).collect();
    let reservation_ids = ids_of(&acks, |effect| matches!(effect, Effect::Reservation));
    let order_ids = ids_of(&acks, |effect| matches!(effect, Effect::Checkout));
    let emails: Vec<String> = acks
        .values()
        .filter_map(|ack| match &ack.effect {
            Effect::Signup { email } => Some(email.clone()),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let slots: Vec<String> = recorded.slots.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();

    let mut checked = Checked { acknowledged: acks.len(), ..Checked::default() };
    let mut views = BTreeMap::new();
    for region in &deployment.regions {
        let name = region.name.as_str();
        let mut owned = connect(&region.database).await?;
        let connection = &mut owned;
        let mut view = RegionView::default();
        for chunk in ids.chunks(IN_LIST_MAX) {
            let sql = format!("SELECT id, status FROM rn_commands WHERE id IN ({})", placeholders(chunk.len()));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *connection).await.map_err(sql_error(name, "rn_commands"))? {
                let id: String = row.try_get(0).map_err(sql_error(name, "rn_commands id"))?;
                let status: String = row.try_get(1).map_err(sql_error(name, "rn_commands status"))?;
                if view.statuses.insert(id.clone(), status).is_some() {
                    checked.duplicates.push(Duplicate {
                        region: name.into(),
                        found_by: "id",
                        what: format!("command {id} recorded twice in rn_commands"),
                    });
                }
            }
        }
        view.reservations = counts_in(
            connection,
            name,
            "SELECT id, COUNT(*) AS n FROM cafe_reservations WHERE id IN ({in}) GROUP BY id",
            &reservation_ids,
        )
        .await?;
        view.orders = counts_in(
            connection,
            name,
            "SELECT id, COUNT(*) AS n FROM bs_orders WHERE id IN ({in}) GROUP BY id",
            &order_ids,
        )
        .await?;
        view.users = counts_in(
            connection,
            name,
            "SELECT email, COUNT(*) AS n FROM bs_users WHERE email IN ({in}) GROUP BY email",
            &emails,
        )
        .await?;
        for (table, counts) in
            [("cafe_reservations", &view.reservations), ("bs_orders", &view.orders), ("bs_users", &view.users)]
        {
            for (id, count) in counts.iter().filter(|(_, count)| **count > 1) {
                checked.duplicates.push(Duplicate {
                    region: name.into(),
                    found_by: "id",
                    what: format!("{id}: {count} rows in {table}"),
                });
            }
        }
        find_effect_duplicates(connection, name, tag, &slots, &recorded.shopper_ids, before, &mut checked.duplicates)
            .await?;
        let _ = owned.close().await;
        views.insert(name.to_string(), view);
    }

    // Signed: the shoppers' sign-ups are acknowledged before the load starts.
    let at_ms = |ack: &Ack| {
        if ack.at >= origin {
            ack.at.duration_since(origin).as_millis() as i64
        } else {
            -(origin.duration_since(ack.at).as_millis() as i64)
        }
    };
    let mut missing_by_region: BTreeMap<String, Vec<i64>> =
        deployment.regions.iter().map(|region| (region.name.clone(), Vec::new())).collect();
    for (id, ack) in &acks {
        let counts = checked.by_kind.entry(ack.kind.to_string()).or_default();
        counts.acknowledged += 1;
        let committed_somewhere =
            views.values().any(|view| view.statuses.get(*id).is_some_and(|status| status == "committed"));
        let rejected_somewhere =
            views.values().any(|view| view.statuses.get(*id).is_some_and(|status| status == "rejected"));
        let write_ref = |missing_in: Vec<String>| WriteRef {
            id: id.to_string(),
            kind: ack.kind.to_string(),
            acknowledged_at_seconds: at_ms(ack) as f64 / 1000.0,
            answered: ack.answered.clone(),
            why: missing_in.iter().map(|region| why_missing(region, &views[region], id, &ack.effect)).collect(),
            missing_in,
        };
        if committed_somewhere {
            let missing_in: Vec<String> = views
                .iter()
                .filter(|(_, view)| !holds(view, id, &ack.effect))
                .map(|(region, _)| region.clone())
                .collect();
            if missing_in.is_empty() {
                checked.committed += 1;
                counts.committed += 1;
            } else {
                for region in &missing_in {
                    missing_by_region.get_mut(region).expect("a known region").push(at_ms(ack));
                }
                checked.lost += 1;
                counts.lost += 1;
                if checked.lost_writes.len() < LISTED_MAX {
                    checked.lost_writes.push(write_ref(missing_in));
                }
            }
        } else if rejected_somewhere {
            checked.rejected += 1;
            counts.rejected += 1;
        } else if queued.contains(*id) {
            checked.stuck += 1;
            counts.stuck += 1;
            if checked.stuck_writes.len() < LISTED_MAX {
                checked.stuck_writes.push(write_ref(views.keys().cloned().collect()));
            }
        } else {
            let missing_in: Vec<String> = views.keys().cloned().collect();
            for region in &missing_in {
                missing_by_region.get_mut(region).expect("a known region").push(at_ms(ack));
            }
            checked.lost += 1;
            counts.lost += 1;
            if checked.lost_writes.len() < LISTED_MAX {
                checked.lost_writes.push(write_ref(missing_in));
            }
        }
    }
    checked.regions = missing_by_region
        .into_iter()
        .map(|(region, times)| RegionMissing {
            region,
            missing: times.len(),
            window_seconds: (!times.is_empty()).then(|| {
                let min = *times.iter().min().expect("not empty");
                let max = *times.iter().max().expect("not empty");
                [min as f64 / 1000.0, max as f64 / 1000.0]
            }),
        })
        .collect();
    checked.duplicated = checked.duplicates.len();
    assert!(
        checked.committed + checked.rejected + checked.lost + checked.stuck == checked.acknowledged,
        "every acknowledged write is counted once: {checked:?}"
    );
    Ok(checked)
}

fn ids_of(acks: &BTreeMap<&str, &Ack>, wanted: impl Fn(&Effect) -> bool) -> Vec<String> {
    acks.values().filter(|ack| wanted(&ack.effect)).map(|ack| ack.id.clone()).collect()
}

/// What the region lacks of a write it does not hold.
fn why_missing(region: &str, view: &RegionView, id: &str, effect: &Effect) -> String {
    match view.statuses.get(id) {
        None => format!("{region}: no record in rn_commands"),
        Some(status) if status != "committed" => format!("{region}: recorded {status} in rn_commands"),
        Some(_) => {
            let table = match effect {
                Effect::Reservation => "cafe_reservations",
                Effect::Checkout => "bs_orders",
                Effect::Signup { .. } => "bs_users",
                Effect::CartLine => "the cart",
            };
            format!("{region}: committed in rn_commands, but no row in {table}")
        }
    }
}

/// The region holds the write: its command record says committed and the app's row is there.
fn holds(view: &RegionView, id: &str, effect: &Effect) -> bool {
    if view.statuses.get(id).is_none_or(|status| status != "committed") {
        return false;
    }
    match effect {
        Effect::Reservation => view.reservations.get(id).is_some_and(|count| *count > 0),
        Effect::Checkout => view.orders.get(id).is_some_and(|count| *count > 0),
        Effect::Signup { email } => view.users.get(email).is_some_and(|count| *count > 0),
        // A cart line is consumed by the checkout after it: its record is what stays.
        Effect::CartLine => true,
    }
}

/// Counters that are not their recount, and the same reservation under two ids.
async fn find_effect_duplicates(
    connection: &mut AnyConnection,
    region: &str,
    tag: &str,
    slots: &[String],
    shopper_ids: &[String],
    before: &StockSnapshot,
    duplicates: &mut Vec<Duplicate>,
) -> Result<(), DrillError> {
    // The same write applied under two ids: two rows carrying one drill note.
    let prefix = crate::workload::notes_prefix(tag);
    let rows = sqlx::query(
        "SELECT notes, COUNT(*) AS n FROM cafe_reservations WHERE notes LIKE $1 GROUP BY notes HAVING COUNT(*) > 1",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(&mut *connection)
    .await
    .map_err(sql_error(region, "reservations by note"))?;
    for row in rows {
        let notes: String = row.try_get(0).map_err(sql_error(region, "notes"))?;
        let count: i64 = row.try_get(1).map_err(sql_error(region, "count"))?;
        duplicates.push(Duplicate {
            region: region.into(),
            found_by: "content",
            what: format!("reservation \"{notes}\" stored {count} times"),
        });
    }

    // Seats: each slot's counter equals the parties booked at it.
    let booked =
        counts_in(connection, region, "SELECT slot, booked FROM cafe_slots WHERE slot IN ({in})", slots).await?;
    let recount = counts_in(
        connection,
        region,
        "SELECT slot, CAST(SUM(party_size) AS BIGINT) AS seats FROM cafe_reservations WHERE slot IN ({in}) GROUP BY slot",
        slots,
    )
    .await?;
    for slot in slots {
        let (counter, rows) = (booked.get(slot).copied().unwrap_or(0), recount.get(slot).copied().unwrap_or(0));
        if counter != rows {
            duplicates.push(Duplicate {
                region: region.into(),
                found_by: "effect",
                what: format!("slot {slot}: seat counter {counter}, reservations hold {rows}"),
            });
        }
    }

    // Best sellers: each book's count equals the copies in order lines.
    let sold = pairs(connection, region, "SELECT book_id, sold FROM bs_bestsellers").await?;
    let lines = pairs(
        connection,
        region,
        "SELECT book_id, CAST(SUM(quantity) AS BIGINT) AS copies FROM bs_order_lines GROUP BY book_id",
    )
    .await?;
    let books: BTreeSet<&String> = sold.keys().chain(lines.keys()).collect();
    for book in books {
        let (counter, copies) = (sold.get(book).copied().unwrap_or(0), lines.get(book).copied().unwrap_or(0));
        if counter != copies {
            duplicates.push(Duplicate {
                region: region.into(),
                found_by: "effect",
                what: format!("book {book}: best-seller count {counter}, order lines hold {copies}"),
            });
        }
    }

    // Stock: what each book's stock lost during the run equals what its order lines gained.
    if let Some(before) = before.regions.get(region) {
        let after = stock_and_lines(connection, region).await?;
        for (book, (stock_after, lines_after)) in &after {
            let (stock_before, lines_before) = before.get(book).copied().unwrap_or((*stock_after, *lines_after));
            if stock_before - stock_after != lines_after - lines_before {
                duplicates.push(Duplicate {
                    region: region.into(),
                    found_by: "effect",
                    what: format!(
                        "book {book}: stock went {stock_before} -> {stock_after}, order lines {lines_before} -> {lines_after}"
                    ),
                });
            }
        }
    }

    // A shopper adds one copy of a book once per run: a cart line with more was added twice.
    for chunk in shopper_ids.chunks(IN_LIST_MAX) {
        let sql = format!(
            "SELECT user_id, book_id, quantity FROM bs_cart_lines WHERE user_id IN ({}) AND quantity > 1",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        for row in query.fetch_all(&mut *connection).await.map_err(sql_error(region, "cart lines"))? {
            let user: String = row.try_get(0).map_err(sql_error(region, "user id"))?;
            let book: String = row.try_get(1).map_err(sql_error(region, "book id"))?;
            let quantity: i64 = row.try_get(2).map_err(sql_error(region, "quantity"))?;
            duplicates.push(Duplicate {
                region: region.into(),
                found_by: "effect",
                what: format!("cart of {user}: {quantity} copies of {book}, the shopper added one"),
            });
        }
    }

    // ...and an order line with more.
    for chunk in shopper_ids.chunks(IN_LIST_MAX) {
        let sql = format!(
            "SELECT o.id, l.book_id, l.quantity FROM bs_orders o JOIN bs_order_lines l ON l.order_id = o.id \
             WHERE o.user_id IN ({}) AND l.quantity > 1",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        for row in query.fetch_all(&mut *connection).await.map_err(sql_error(region, "order lines"))? {
            let order: String = row.try_get(0).map_err(sql_error(region, "order id"))?;
            let book: String = row.try_get(1).map_err(sql_error(region, "book id"))?;
            let quantity: i64 = row.try_get(2).map_err(sql_error(region, "quantity"))?;
            duplicates.push(Duplicate {
                region: region.into(),
                found_by: "effect",
                what: format!("order {order}: {quantity} copies of {book}, the shopper added one"),
            });
        }
    }
    Ok(())
}
