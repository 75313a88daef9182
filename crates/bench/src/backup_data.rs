//! The backup scenario's database: a stopped one-region deployment (`DIR/r1/store.db`) whose
//! schema the binary's own migrations make, filled with cafe reservations and bookstore signups,
//! cart lines and orders written as the apply path writes them (the `rn_commands` record, the
//! outbox row, the app's rows) until the file reaches a given size.

use anyhow::{bail, Context};
use rananeeti_platform::sqlx::Row as _;
use rananeeti_platform::{Command, CommandId, Hlc, Store, StoreConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Rows per INSERT statement (12 columns at most: well under SQLite's parameter limit).
const INSERT_BATCH_ROWS: usize = 100;
/// Units (three reservations and one order) per transaction: about 15 MB of file each.
const UNITS_PER_TRANSACTION: usize = 2_500;
/// How often generation reports its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// The same data every run, so runs compare.
const SEED: u64 = 6;
/// Share of reservations refused by the seat rule (recorded *rejected*, no row written).
const REJECTED_FRACTION: f64 = 0.03;
/// Share of commands that went through the fallback queue.
const VIA_QUEUE_FRACTION: f64 = 0.01;
/// Accounts made before any order may go to a returning customer.
const FIRST_ACCOUNTS: usize = 500;
/// Share of orders placed by a new account.
const NEW_ACCOUNT_FRACTION: f64 = 0.15;
/// Days of history the commands are spread over, ending about now.
const HISTORY_DAYS: u64 = 365;
const REGION: &str = "r1";
const NODE: &str = "r1-n1";

const FIRST_NAMES: [&str; 32] = [
    "Amara", "Bilal", "Chen", "Dagny", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kavya", "Lars", "Mei",
    "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sami", "Tomasz", "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zofia",
    "Aoife", "Bruno", "Chiara", "Dmitri", "Esme", "Felix",
];
const LAST_NAMES: [&str; 32] = [
    "Okafor",
    "Haddad",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Kowalski",
    "Osei",
    "Ferreira",
    "Nguyen",
    "Schmidt",
    "Rossi",
    "Kaur",
    "Novak",
    "Murphy",
    "Yilmaz",
    "Costa",
    "Ivanova",
    "Park",
    "Mensah",
    "Andersen",
    "Silva",
    "Dubois",
    "Khan",
    "Horvath",
    "Sato",
    "Oliveira",
    "Berg",
    "Fischer",
    "Mwangi",
    "Popescu",
    "Larsen",
    "Reyes",
];
const NOTE_PHRASES: [&str; 24] = [
    "window seat if possible",
    "a high chair for our toddler",
    "one guest is allergic to peanuts",
    "celebrating a birthday, could you bring a candle",
    "we may be ten minutes late",
    "vegetarian menu please",
    "quiet table, it is a business lunch",
    "wheelchair access needed",
    "anniversary dinner",
    "two of us are gluten free",
    "outside on the terrace if the weather is good",
    "we will bring a cake",
    "please seat us away from the door",
    "first visit, a friend recommended you",
    "could we see the wine list in advance",
    "one dog, well behaved",
    "lactose intolerant",
    "booth if available",
    "we need to leave by nine",
    "surprise party, please do not mention it on the phone",
    "pram for a newborn",
    "no shellfish for one guest",
    "same table as last time",
    "a vegan option for two",
];

/// What was generated and how long it took.
pub struct Generated {
    pub db_file: PathBuf,
    pub bytes: u64,
    pub seconds: f64,
    /// Rows of each table the scenario writes, counted at the end.
    pub rows: BTreeMap<String, u64>,
}

/// The tables whose rows are counted in the report and after the restore.
pub const COUNTED_TABLES: [&str; 8] = [
    "rn_commands",
    "rn_outbox",
    "cafe_reservations",
    "cafe_slots",
    "bs_users",
    "bs_orders",
    "bs_order_lines",
    "bs_bestsellers",
];

/// Makes `deployment/r1/store.db` of about `target_bytes`; fails after `deadline`.
pub async fn generate(deployment: &Path, target_bytes: u64, deadline: Duration) -> anyhow::Result<Generated> {
    let started = Instant::now();
    let region_dir = deployment.join(REGION);
    std::fs::create_dir_all(&region_dir).with_context(|| format!("creating {}", region_dir.display()))?;
    let db_file = region_dir.join("store.db");
    let books = migrate(&db_file).await?;
    anyhow::ensure!(!books.is_empty(), "the bookstore's migrations seeded no books");

    // A fixture, not acknowledged data: no fsync until the end, large page cache.
    let mut connection = SqliteConnectOptions::from_str(&format!("sqlite://{}", db_file.display()))?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Off)
        .pragma("cache_size", "-262144")
        .connect()
        .await
        .with_context(|| format!("opening {}", db_file.display()))?;
    let mut generator = Generator::new(books);
    let mut last_report = Instant::now();
    loop {
        let mut tx = connection.begin().await?;
        for _ in 0..UNITS_PER_TRANSACTION {
            for _ in 0..3 {
                generator.reservation();
            }
            generator.order();
            generator.flush_full(&mut tx).await?;
        }
        generator.flush_all(&mut tx).await?;
        tx.commit().await?;
        let bytes = database_bytes(&mut connection).await?;
        if last_report.elapsed() >= PROGRESS_INTERVAL || bytes >= target_bytes {
            last_report = Instant::now();
            eprintln!(
                "[bench] backup data: {:.0} of {:.0} MB after {:.0} s",
                bytes as f64 / 1e6,
                target_bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        if bytes >= target_bytes {
            break;
        }
        if started.elapsed() > deadline {
            bail!(
                "generating the database took longer than {} s ({:.0} of {:.0} MB)",
                deadline.as_secs(),
                bytes as f64 / 1e6,
                target_bytes as f64 / 1e6
            );
        }
    }
    // The derived tables, as the applies would have left them.
    let mut tx = connection.begin().await?;
    for statement in [
        "DELETE FROM cafe_slots",
        "INSERT INTO cafe_slots (slot, booked) \
         SELECT slot, CAST(SUM(party_size) AS BIGINT) FROM cafe_reservations GROUP BY slot",
        "DELETE FROM bs_bestsellers",
        "INSERT INTO bs_bestsellers (book_id, sold) \
         SELECT book_id, CAST(SUM(quantity) AS BIGINT) FROM bs_order_lines GROUP BY book_id",
    ] {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let mut rows = BTreeMap::new();
    for table in COUNTED_TABLES {
        rows.insert(table.to_string(), count_rows(&mut connection, table).await?);
    }
    // As a cleanly stopped node leaves it: everything in the main file, no WAL.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut connection).await?;
    connection.close().await?;
    let bytes = std::fs::metadata(&db_file).with_context(|| format!("reading {}", db_file.display()))?.len();
    Ok(Generated { db_file, bytes, seconds: started.elapsed().as_secs_f64(), rows })
}

/// Rows of `table` in the SQLite file at `db_file`, or in an open connection.
pub async fn count_rows_in(db_file: &Path, table: &str) -> anyhow::Result<u64> {
    let mut connection = SqliteConnectOptions::from_str(&format!("sqlite://{}", db_file.display()))?
        .read_only(true)
        .connect()
        .await
        .with_context(|| format!("opening {}", db_file.display()))?;
    let rows = count_rows(&mut connection, table).await;
    connection.close().await?;
    rows
}

async fn count_rows(connection: &mut SqliteConnection, table: &str) -> anyhow::Result<u64> {
    let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}")).fetch_one(&mut *connection).await?;
    Ok(sqlx::Row::try_get::<i64, _>(&row, "n")? as u64)
}

async fn database_bytes(connection: &mut SqliteConnection) -> anyhow::Result<u64> {
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut *connection).await?;
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut *connection).await?;
    Ok((pages * page_size) as u64)
}

/// Runs every migration of the binary (as `rananeeti up` would on first start) and answers the
/// seeded books with their prices.
async fn migrate(db_file: &Path) -> anyhow::Result<Vec<(String, i64)>> {
    let store = Store::open(
        StoreConfig {
            writer_url: format!("sqlite://{}?mode=rwc", db_file.display()),
            reader_url: None,
            connections_max: 1,
            busy_timeout_ms: 5_000,
            statement_timeout_ms: 0,
            acquire_timeout_ms: 10_000,
        },
        rananeeti::node_cmd::all_migrations(),
    )?;
    store.ensure_migrated().await.context("migrating the benchmark's database")?;
    let pool = store.writer();
    let books = rananeeti_platform::sqlx::query("SELECT id, price_cents FROM bs_books ORDER BY id")
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|row| Ok((row.try_get::<String, _>("id")?, row.try_get::<i64, _>("price_cents")?)))
        .collect::<Result<Vec<_>, rananeeti_platform::sqlx::Error>>()?;
    pool.close().await;
    Ok(books)
}

enum Value {
    Int(i64),
    Text(String),
    Null,
}

/// Rows waiting to be inserted into one table, many per statement.
struct Batch {
    table: &'static str,
    columns: &'static [&'static str],
    rows: Vec<Vec<Value>>,
}

impl Batch {
    fn new(table: &'static str, columns: &'static [&'static str]) -> Batch {
        Batch { table, columns, rows: Vec::with_capacity(INSERT_BATCH_ROWS) }
    }

    fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len(), "a row of {} has the table's columns", self.table);
        self.rows.push(row);
    }

    async fn flush(&mut self, connection: &mut SqliteConnection) -> anyhow::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let placeholders = format!("({})", vec!["?"; self.columns.len()].join(", "));
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            self.table,
            self.columns.join(", "),
            vec![placeholders; self.rows.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for row in self.rows.drain(..) {
            for value in row {
                query = match value {
                    Value::Int(number) => query.bind(number),
                    Value::Text(text) => query.bind(text),
                    Value::Null => query.bind(Option::<String>::None),
                };
            }
        }
        query.execute(&mut *connection).await.with_context(|| format!("inserting into {}", self.table))?;
        Ok(())
    }
}

struct Generator {
    rng: StdRng,
    books: Vec<(String, i64)>,
    /// Account ids so far (returning customers order again), each with its newest order's HLC
    /// (0: none yet).
    users: Vec<(String, u64)>,
    /// The first 8 bytes of every command id so far: content-digest ids of equal content
    /// collide (the same booking twice), and a real node would call the second a duplicate.
    ids: HashSet<u64>,
    /// Wall-clock milliseconds of the last command.
    clock_ms: u64,
    commands: Batch,
    outbox: Batch,
    reservations: Batch,
    users_table: Batch,
    orders: Batch,
    order_lines: Batch,
}

impl Generator {
    fn new(books: Vec<(String, i64)>) -> Generator {
        let now_ms = rananeeti_platform::hlc::wall_clock_ms();
        Generator {
            rng: StdRng::seed_from_u64(SEED),
            books,
            users: Vec::new(),
            ids: HashSet::new(),
            clock_ms: now_ms - HISTORY_DAYS * 86_400_000,
            commands: Batch::new(
                "rn_commands",
                &[
                    "id",
                    "kind",
                    "status",
                    "reason",
                    "origin_region",
                    "origin_node",
                    "applied_region",
                    "applied_node",
                    "hlc",
                    "payload",
                    "via_queue",
                    "applied_at_ms",
                ],
            ),
            outbox: Batch::new("rn_outbox", &["id", "command"]),
            reservations: Batch::new("cafe_reservations", &["id", "name", "party_size", "slot", "notes", "hlc"]),
            users_table: Batch::new("bs_users", &["id", "email", "password_hash", "home_region", "created_hlc"]),
            orders: Batch::new("bs_orders", &["id", "user_id", "total_cents", "placed_hlc", "region"]),
            order_lines: Batch::new("bs_order_lines", &["order_id", "book_id", "quantity", "price_cents"]),
        }
    }

    fn batches(&mut self) -> [&mut Batch; 6] {
        [
            &mut self.commands,
            &mut self.outbox,
            &mut self.reservations,
            &mut self.users_table,
            &mut self.orders,
            &mut self.order_lines,
        ]
    }

    async fn flush_full(&mut self, connection: &mut SqliteConnection) -> anyhow::Result<()> {
        for batch in self.batches() {
            if batch.rows.len() >= INSERT_BATCH_ROWS {
                batch.flush(connection).await?;
            }
        }
        Ok(())
    }

    async fn flush_all(&mut self, connection: &mut SqliteConnection) -> anyhow::Result<()> {
        for batch in self.batches() {
            batch.flush(connection).await?;
        }
        Ok(())
    }

    /// A new id, unless this content was already written (then `None`).
    fn fresh_id(&mut self, kind: &str, content: &str) -> Option<CommandId> {
        let id = CommandId::digest(kind, content.as_bytes());
        let prefix = u64::from_be_bytes(id.as_bytes()[..8].try_into().expect("8 bytes"));
        self.ids.insert(prefix).then_some(id)
    }

    /// The next command's HLC: about ten seconds after the last one, on average.
    fn next_hlc(&mut self) -> Hlc {
        self.clock_ms += self.rng.gen_range(0..20_000);
        Hlc((self.clock_ms << 16) | self.rng.gen_range(0..4))
    }

    /// The dedup record, and the outbox row when it committed.
    fn record(&mut self, kind: &str, id: CommandId, payload: serde_json::Value, hlc: Hlc, rejected: Option<String>) {
        let via_queue = self.rng.gen_bool(VIA_QUEUE_FRACTION);
        let applied_at_ms = (hlc.physical_ms() + self.rng.gen_range(1..40)) as i64;
        let committed = rejected.is_none();
        self.commands.push(vec![
            Value::Text(id.to_hex()),
            Value::Text(kind.to_string()),
            Value::Text(if committed { "committed" } else { "rejected" }.to_string()),
            rejected.map(Value::Text).unwrap_or(Value::Null),
            Value::Text(REGION.to_string()),
            Value::Text(NODE.to_string()),
            Value::Text(REGION.to_string()),
            Value::Text(NODE.to_string()),
            Value::Int(hlc.0 as i64),
            Value::Text(payload.to_string()),
            Value::Int(via_queue as i64),
            Value::Int(applied_at_ms),
        ]);
        if committed {
            let command = Command {
                kind: kind.to_string(),
                id,
                payload,
                origin_region: REGION.to_string(),
                origin_node: NODE.to_string(),
                hlc,
                request: None,
            };
            let text = serde_json::to_string(&command).expect("a command serializes");
            self.outbox.push(vec![Value::Text(id.to_hex()), Value::Text(text)]);
        }
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.rng.gen_range(0..words.len())]
    }

    fn notes(&mut self) -> String {
        let phrases = match self.rng.gen_range(0..10) {
            0..=3 => 0,
            4..=7 => 1,
            8 => 2,
            _ => 3,
        };
        let mut notes = String::new();
        for index in 0..phrases {
            let phrase = self.pick(&NOTE_PHRASES);
            if index > 0 {
                notes.push_str("; ");
            }
            notes.push_str(phrase);
        }
        notes.chars().take(200).collect()
    }

    /// A table booked at a quarter hour between 11:00 and 21:45, up to two months after `hlc`.
    fn slot(&mut self, hlc: Hlc) -> String {
        let day_start_s = (hlc.physical_ms() / 1000 / 86_400 + self.rng.gen_range(0..60)) * 86_400;
        let minutes = 11 * 60 + 15 * self.rng.gen_range(0..44u64);
        let at = time::OffsetDateTime::from_unix_timestamp((day_start_s + minutes * 60) as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        at.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]")).expect("a date formats")
    }

    fn reservation(&mut self) {
        let name = format!("{} {}", self.pick(&FIRST_NAMES), self.pick(&LAST_NAMES));
        let party_size: i64 =
            if self.rng.gen_bool(0.9) { self.rng.gen_range(1..=6) } else { self.rng.gen_range(7..=20) };
        let hlc = self.next_hlc();
        let time = self.slot(hlc);
        let notes = self.notes();
        let content = format!("{name}\u{1f}{party_size}\u{1f}{time}\u{1f}{notes}");
        let Some(id) = self.fresh_id("cafe.reserve", &content) else { return };
        let payload = json!({ "name": name, "party_size": party_size, "time": time, "notes": notes });
        if self.rng.gen_bool(REJECTED_FRACTION) {
            let reason =
                format!("fully booked at {}: 2 of 60 seats left for a party of {party_size}", time.replace('T', " "));
            self.record("cafe.reserve", id, payload, hlc, Some(reason));
            return;
        }
        self.record("cafe.reserve", id, payload, hlc, None);
        self.reservations.push(vec![
            Value::Text(id.to_hex()),
            Value::Text(name),
            Value::Int(party_size),
            Value::Text(time),
            Value::Text(notes),
            Value::Int(hlc.0 as i64),
        ]);
    }

    /// A new account; answers its index in `users`.
    fn signup(&mut self) -> usize {
        let email = format!(
            "{}.{}{}@example.org",
            self.pick(&FIRST_NAMES).to_lowercase(),
            self.pick(&LAST_NAMES).to_lowercase(),
            self.users.len()
        );
        let user_id = CommandId::digest("bookstore.user", email.as_bytes()).to_hex();
        let hlc = self.next_hlc();
        let salt: String = (0..22).map(|_| self.base64_char()).collect();
        let hash: String = (0..43).map(|_| self.base64_char()).collect();
        let password_hash = format!("$argon2id$v=19$m=19456,t=2,p=1${salt}${hash}");
        let payload = json!({
            "user_id": user_id, "email": email, "password_hash": password_hash, "home_region": REGION,
        });
        if let Some(id) = self.fresh_id("bookstore.signup", &email) {
            self.record("bookstore.signup", id, payload, hlc, None);
            self.users_table.push(vec![
                Value::Text(user_id.clone()),
                Value::Text(email),
                Value::Text(password_hash),
                Value::Text(REGION.to_string()),
                Value::Int(hlc.0 as i64),
            ]);
        }
        self.users.push((user_id.clone(), 0));
        self.users.len() - 1
    }

    fn base64_char(&mut self) -> char {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        ALPHABET[self.rng.gen_range(0..ALPHABET.len())] as char
    }

    /// Cart lines set one command each, then the checkout: the order and its lines.
    fn order(&mut self) {
        let user = if self.users.len() < FIRST_ACCOUNTS || self.rng.gen_bool(NEW_ACCOUNT_FRACTION) {
            self.signup()
        } else {
            self.rng.gen_range(0..self.users.len())
        };
        // A line set on an empty cart replaces the user's newest order, as the API does.
        let (user_id, replaces_hlc) = self.users[user].clone();
        let wanted = self.rng.gen_range(1..=4);
        let mut lines: Vec<(String, i64, i64, u64)> = Vec::new();
        for _ in 0..wanted * 3 {
            if lines.len() == wanted {
                break;
            }
            let (book_id, price_cents) = self.books[self.rng.gen_range(0..self.books.len())].clone();
            if lines.iter().any(|line| line.0 == book_id) {
                continue;
            }
            let quantity = if self.rng.gen_bool(0.85) { 1 } else { self.rng.gen_range(2..=3) };
            let content = format!("{user_id}\u{1f}{book_id}\u{1f}{quantity}\u{1f}{replaces_hlc}");
            let Some(id) = self.fresh_id("bookstore.cart_set", &content) else { continue };
            let hlc = self.next_hlc();
            let payload = json!({
                "user_id": user_id, "home_region": REGION, "book_id": book_id, "quantity": quantity,
                "replaces_hlc": replaces_hlc,
            });
            self.record("bookstore.cart_set", id, payload, hlc, None);
            lines.push((book_id, quantity, price_cents, hlc.0));
        }
        let Some(cart_version) = lines.iter().map(|line| line.3).max() else { return };
        let Some(id) = self.fresh_id("bookstore.checkout", &format!("{user_id}\u{1f}{cart_version}")) else { return };
        let hlc = self.next_hlc();
        self.users[user].1 = hlc.0;
        let payload = json!({ "user_id": user_id, "home_region": REGION, "cart_version": cart_version });
        self.record("bookstore.checkout", id, payload, hlc, None);
        let order_id = id.to_hex();
        let total: i64 = lines.iter().map(|line| line.1 * line.2).sum();
        self.orders.push(vec![
            Value::Text(order_id.clone()),
            Value::Text(user_id),
            Value::Int(total),
            Value::Int(hlc.0 as i64),
            Value::Text(REGION.to_string()),
        ]);
        for (book_id, quantity, price_cents, _) in lines {
            self.order_lines.push(vec![
                Value::Text(order_id.clone()),
                Value::Text(book_id),
                Value::Int(quantity),
                Value::Int(price_cents),
            ]);
        }
    }
}
