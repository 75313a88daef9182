//! SQLite's side of the export and import, through rusqlite on a blocking thread: one
//! connection stepping statements in place, instead of sqlx's worker thread handing each row to
//! an async task through a channel (most of `create`'s time went to those hand-offs) and sqlx's
//! per-parameter name lookups on insert (most of a restore's).
//!
//! Same bytes as the sqlx path: rows are written by [`RowWriter`] and hashed by [`TableHasher`],
//! so a backup restores and verifies the same whichever side read or wrote it.

use crate::format::{parse_row, Cell, EndMark, Line, RowWriter, TableHasher, TableSum};
use crate::sql::{quote, select_sql, SKIPPED_TABLES};
use anyhow::Context;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Size of the pieces of export handed to the compressing side.
pub const EXPORT_CHUNK_BYTES: usize = 1 << 20;
/// How long a reader waits for a writer's lock (a running deployment checkpointing).
const BUSY_TIMEOUT_MS: u64 = 5_000;
/// SQLite's page cache while importing, in KiB (negative `cache_size` is KiB): enough for the
/// indexes being built to stay mostly in memory, well inside the 100 MB memory budget.
const IMPORT_CACHE_KIB: i64 = 32 * 1024;
/// Rows between two progress reports on import.
const IMPORT_PROGRESS_ROWS: u64 = 50_000;

/// The database file of a `sqlite:` URL (`sqlite://PATH?mode=...`, `sqlite:PATH`).
pub fn path_of_url(url: &str) -> anyhow::Result<PathBuf> {
    rananeeti_platform::store::sqlite_path(url).context("not a sqlite: URL of a file")
}

fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
    let connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("opening {}", path.display()))?;
    connection.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    Ok(connection)
}

pub fn tables(connection: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?;
    let names = statement.query_map([], |row| row.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names.into_iter().filter(|name| !SKIPPED_TABLES.contains(&name.as_str())).collect())
}

pub fn columns(connection: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
    let names = statement.query_map([table], |row| row.get::<_, String>(0))?.collect();
    names
}

/// Reads every row of `table`, calling `each` with the row's canonical JSON.
fn read_table(
    connection: &Connection,
    table: &str,
    columns: &[String],
    mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let select = select_sql(table, columns);
    let mut statement = connection.prepare(&select)?;
    let mut rows = statement.query([])?;
    let mut line = Vec::with_capacity(4096);
    while let Some(row) = rows.next()? {
        line.clear();
        let mut writer = RowWriter::start(&mut line);
        for (index, column) in columns.iter().enumerate() {
            match row.get_ref(index)? {
                ValueRef::Integer(value) => writer.integer(value),
                ValueRef::Text(bytes) => writer.text(
                    std::str::from_utf8(bytes)
                        .with_context(|| format!("table {table} column {column}: text that is not UTF-8"))?,
                ),
                ValueRef::Null => writer.null(),
                // Every rananeeti column is BIGINT or TEXT; anything else would not restore the
                // same into PostgreSQL, so it is refused rather than carried approximately.
                ValueRef::Real(_) | ValueRef::Blob(_) => {
                    anyhow::bail!(
                        "table {table} column {column} holds a REAL or BLOB; exports carry integers, text and NULL"
                    )
                }
            }
        }
        writer.finish();
        each(&line)?;
    }
    Ok(())
}

/// Writes every table of the database at `path` as export lines, in one read transaction (one
/// instant of the database), handing pieces of about [`EXPORT_CHUNK_BYTES`] to `send` (which
/// blocks while the other side is behind: memory stays bounded). Runs on a blocking thread.
/// Answers each table's sum.
pub fn export(
    path: &Path,
    mut send: impl FnMut(Vec<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<BTreeMap<String, TableSum>> {
    let connection = open_read_only(path)?;
    // A read transaction: every table below is read from the same snapshot (WAL keeps it while
    // the deployment goes on writing).
    connection.execute_batch("BEGIN DEFERRED")?;
    let mut sums = BTreeMap::new();
    let mut chunk = Vec::with_capacity(EXPORT_CHUNK_BYTES + 64 * 1024);
    for table in tables(&connection)? {
        let columns = columns(&connection, &table)?;
        serde_json::to_writer(&mut chunk, &Line::Table { table: table.clone(), columns: columns.clone() })?;
        chunk.push(b'\n');
        let mut hasher = TableHasher::default();
        read_table(&connection, &table, &columns, |row| {
            hasher.add(row);
            chunk.extend_from_slice(row);
            chunk.push(b'\n');
            if chunk.len() >= EXPORT_CHUNK_BYTES {
                send(std::mem::replace(&mut chunk, Vec::with_capacity(EXPORT_CHUNK_BYTES + 64 * 1024)))?;
            }
            Ok(())
        })
        .with_context(|| format!("reading table {table}"))?;
        sums.insert(table, hasher.finish());
    }
    connection.execute_batch("COMMIT")?;
    if !chunk.is_empty() {
        send(chunk)?;
    }
    Ok(sums)
}

/// The sums of the named tables of the database at `path` (to check a restore).
pub fn sums(path: &Path, only: &[String]) -> anyhow::Result<BTreeMap<String, TableSum>> {
    let connection = open_read_only(path)?;
    connection.execute_batch("BEGIN DEFERRED")?;
    let mut sums = BTreeMap::new();
    for table in only {
        let columns = columns(&connection, table)?;
        let mut hasher = TableHasher::default();
        read_table(&connection, table, &columns, |row| {
            hasher.add(row);
            Ok(())
        })
        .with_context(|| format!("reading back table {table}"))?;
        sums.insert(table.clone(), hasher.finish());
    }
    connection.execute_batch("COMMIT")?;
    Ok(sums)
}

/// Creates the file of a new store (empty, in WAL mode, which writes its first page), so that a
/// disk that cannot hold it fails here with SQLite's own reason ("database or disk is full"),
/// not later as a connection pool's timeout.
pub fn create_new(path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!path.exists(), "{} exists already: restore makes a new store", path.display());
    let connection = Connection::open(path).with_context(|| format!("creating {}", path.display()))?;
    connection.pragma_update(None, "journal_mode", "WAL").with_context(|| format!("creating {}", path.display()))?;
    connection.close().map_err(|(_, error)| error).with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}

/// Copies a migrated store (its schema and whatever the migrations put in it) into `target`, a
/// new file only this process knows: the migrations run through sqlx, whose connection may
/// still hold `migrated` open on its worker thread after its pool is closed, and the import
/// needs its file to itself (leaving WAL needs an exclusive lock, and SQLite does not wait for
/// one). `migrated` and its WAL files are removed afterwards.
pub fn copy_migrated(migrated: &Path, target: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!target.exists(), "{} exists already: restore makes a new store", target.display());
    let connection = open_read_only(migrated)?;
    let target_text = target.to_str().with_context(|| format!("{} is not UTF-8", target.display()))?;
    connection
        .execute("VACUUM INTO ?1", [target_text])
        .with_context(|| format!("creating {} (disk full?)", target.display()))?;
    drop(connection);
    for suffix in ["", "-wal", "-shm"] {
        let mut name = migrated.as_os_str().to_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
    Ok(())
}

/// Imports an export into a brand-new SQLite store at `path` (created and migrated by the
/// caller, nobody else connected): each table's rows replace what the migrations put there, in
/// one transaction. Runs on a blocking thread. Answers the queued commands the export carried, spooled to a scratch file.
///
/// The store is new, so while importing it runs without a journal and without fsyncs (a crash
/// leaves a broken file in a restore that never said it succeeded); afterwards the normal
/// settings (WAL) are back and the file and its directory are fsynced before this returns.
pub fn import_into_new(
    path: &Path,
    mut lines: impl BufRead,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<(crate::spool::QueueSpool, EndMark)> {
    let mut connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("opening {}", path.display()))?;
    connection.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    // The file is ours alone (see `copy_migrated`): no journal while loading it.
    let mode: String = connection.query_row("PRAGMA journal_mode = OFF", [], |row| row.get(0))?;
    anyhow::ensure!(mode == "off", "the new store {} is in use by something else", path.display());
    connection.execute_batch(&format!("PRAGMA synchronous = OFF; PRAGMA cache_size = -{IMPORT_CACHE_KIB};"))?;
    let (queued, end) = {
        // IMMEDIATE: the write lock from the start (a deferred transaction that read first
        // could not upgrade if anything had touched the file in between).
        let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let target_tables = tables(&tx)?;
        let mut queued = crate::spool::QueueSpool::new()?;
        let mut end = None;
        let mut rows_done = 0u64;
        let mut progress_next = IMPORT_PROGRESS_ROWS;
        let mut insert: Option<(String, usize, rusqlite::Statement)> = None;
        let mut line = Vec::with_capacity(64 * 1024);
        loop {
            line.clear();
            if lines.read_until(b'\n', &mut line).context("reading the export")? == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if line.is_empty() {
                continue;
            }
            anyhow::ensure!(end.is_none(), "the export has data after its end mark");
            if line[0] == b'[' {
                let (table, width, statement) =
                    insert.as_mut().ok_or_else(|| anyhow::anyhow!("a row before any table"))?;
                let cells =
                    parse_row(&line).map_err(|error| anyhow::anyhow!("a row of {table} does not parse: {error}"))?;
                anyhow::ensure!(
                    cells.len() == *width,
                    "a row of {table} has {} values for {width} columns",
                    cells.len()
                );
                for (index, cell) in cells.iter().enumerate() {
                    match cell {
                        Cell::Integer(value) => statement.raw_bind_parameter(index + 1, value)?,
                        Cell::Text(text) => statement.raw_bind_parameter(index + 1, text.as_ref())?,
                        Cell::Null => statement.raw_bind_parameter(index + 1, rusqlite::types::Null)?,
                    }
                }
                statement.raw_execute().map_err(|error| anyhow::anyhow!("restoring {table}: {error}"))?;
                rows_done += 1;
                if rows_done >= progress_next {
                    progress_next += IMPORT_PROGRESS_ROWS;
                    progress(rows_done);
                }
                continue;
            }
            insert = None;
            let parsed: Line = serde_json::from_slice(&line)
                .map_err(|error| anyhow::anyhow!("a line of the export does not parse: {error}"))?;
            match parsed {
                Line::Queue { queue } => {
                    for command in &queue {
                        queued.push(command)?;
                    }
                }
                Line::End { end: mark } => end = Some(mark),
                Line::Table { table, columns } => {
                    anyhow::ensure!(
                        target_tables.contains(&table),
                        "the backup has table {table}, which this version of rananeeti does not create"
                    );
                    let target_columns = self::columns(&tx, &table)?;
                    for column in &columns {
                        anyhow::ensure!(
                            target_columns.contains(column),
                            "table {table}: column {column} does not exist here"
                        );
                    }
                    tx.execute(&format!("DELETE FROM {}", quote(&table)), [])?;
                    let sql = format!(
                        "INSERT INTO {} ({}) VALUES ({})",
                        quote(&table),
                        columns.iter().map(|column| quote(column)).collect::<Vec<_>>().join(", "),
                        (1..=columns.len()).map(|index| format!("?{index}")).collect::<Vec<_>>().join(", ")
                    );
                    let statement = tx.prepare(&sql)?;
                    insert = Some((table, columns.len(), statement));
                }
            }
        }
        drop(insert);
        let end = end.ok_or_else(|| anyhow::anyhow!("the export is truncated: it has no end mark"))?;
        anyhow::ensure!(end.rows == rows_done, "the export says {} rows, {rows_done} were read", end.rows);
        tx.commit().context("committing the restored rows (disk full?)")?;
        progress(rows_done);
        (queued, end)
    };
    // Back to the settings the platform runs with, then make it durable.
    connection.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    connection.close().map_err(|(_, error)| error)?;
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("syncing {} (disk full?)", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok((queued, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, note TEXT);
                          CREATE INDEX t_n ON t (n);
                          CREATE TABLE rn_migrations (version INTEGER)";

    /// Export and import through rusqlite give back every row, and the same sums; a truncated
    /// export is refused.
    #[test]
    fn export_then_import_round_trips_and_refuses_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.db");
        let connection = Connection::open(&source).unwrap();
        connection.execute_batch(SCHEMA).unwrap();
        for i in 0..1000i64 {
            let note: Option<String> = (i % 3 != 0).then(|| format!("row {i}: \"quoted\"\ttab\nnewline é"));
            connection
                .execute("INSERT INTO t VALUES (?1, ?2, ?3)", rusqlite::params![format!("id-{i}"), i - 500, note])
                .unwrap();
        }
        drop(connection);
        let mut export_bytes = b"{\"queue\":[]}\n".to_vec();
        let sums_out = export(&source, |chunk| {
            export_bytes.extend_from_slice(&chunk);
            Ok(())
        })
        .unwrap();
        assert_eq!(sums_out["t"].rows, 1000);
        assert!(!sums_out.contains_key("rn_migrations"));
        export_bytes.extend_from_slice(b"{\"end\":{\"tables\":1,\"rows\":1000}}\n");

        let target = dir.path().join("target.db");
        Connection::open(&target).unwrap().execute_batch(SCHEMA).unwrap();
        let (queued, end) = import_into_new(&target, &export_bytes[..], &|_| {}).unwrap();
        assert!(queued.is_empty());
        assert_eq!(end, EndMark { tables: 1, rows: 1000 });
        assert_eq!(sums(&target, &["t".to_string()]).unwrap(), sums_out);
        let mode: String =
            Connection::open(&target).unwrap().query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
        assert_eq!(mode, "wal", "normal settings are back after the import");

        let truncated = dir.path().join("truncated.db");
        Connection::open(&truncated).unwrap().execute_batch(SCHEMA).unwrap();
        let cut = export_bytes.len() - b"{\"end\":{\"tables\":1,\"rows\":1000}}\n".len();
        let error = import_into_new(&truncated, &export_bytes[..cut], &|_| {}).unwrap_err();
        assert!(format!("{error:#}").contains("truncated"), "{error:#}");
    }

    #[test]
    fn urls_name_their_file() {
        assert_eq!(path_of_url("sqlite:///a/b/store.db?mode=ro").unwrap(), PathBuf::from("/a/b/store.db"));
        assert_eq!(path_of_url("sqlite:rel.db").unwrap(), PathBuf::from("rel.db"));
        assert!(path_of_url("sqlite::memory:").is_err());
        assert!(path_of_url("postgres://x").is_err());
    }
}
