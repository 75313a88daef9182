//! Reading a region's database into the portable export, and writing an export into a store.
//! SQLite goes through rusqlite on a blocking thread (`crate::sqlite`); PostgreSQL through the
//! platform's sqlx pools. Both write and hash rows with the same `RowWriter`, so a backup from
//! either restores into either.

use crate::format::{parse_row, Cell, EndMark, Line, RowWriter, TableHasher, TableSum};
use crate::repo::SealedWriter;
use crate::sql::{quote, select_sql, SKIPPED_TABLES};
use futures::TryStreamExt;
use rananeeti_platform::sqlx::{self, AnyConnection, AnyPool, Row};
use rananeeti_platform::StoreKind;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

/// A region's database, as the backup reads or writes it.
pub enum Database {
    /// The SQLite file (read and written with rusqlite).
    Sqlite(PathBuf),
    /// A PostgreSQL database (through sqlx): its pool, and its URL for the import's own
    /// connection (COPY needs sqlx's PostgreSQL connection, not the `Any` one).
    Postgres { pool: AnyPool, url: String },
}

/// Pieces of export in flight between the SQLite reader thread and the compressing side: with
/// `sqlite::EXPORT_CHUNK_BYTES` each, the most the hand-off holds.
const EXPORT_CHUNKS_IN_FLIGHT_MAX: usize = 4;

/// Bytes of COPY text sent to PostgreSQL at a time on import.
const COPY_CHUNK_BYTES: usize = 1 << 20;

pub async fn tables(connection: &mut AnyConnection, kind: StoreKind) -> Result<Vec<String>, sqlx::Error> {
    let sql = match kind {
        StoreKind::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        StoreKind::Postgres => {
            "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
        }
    };
    let rows = sqlx::query(sql).fetch_all(&mut *connection).await?;
    Ok(rows
        .iter()
        .filter_map(|row| row.try_get::<String, _>("name").ok())
        .filter(|name| !SKIPPED_TABLES.contains(&name.as_str()))
        .collect())
}

pub async fn columns(connection: &mut AnyConnection, kind: StoreKind, table: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows = match kind {
        StoreKind::Sqlite => {
            sqlx::query("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                .bind(table)
                .fetch_all(&mut *connection)
                .await?
        }
        StoreKind::Postgres => {
            sqlx::query(
                "SELECT CAST(column_name AS TEXT) AS name FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(&mut *connection)
            .await?
        }
    };
    rows.iter().map(|row| row.try_get::<String, _>("name")).collect()
}

/// Writes a PostgreSQL row's canonical JSON into `out`. Every rananeeti column is BIGINT or
/// TEXT; a value of any other type is refused (naming the table and column) rather than carried
/// as NULL, which would lose it.
fn write_row(row: &sqlx::any::AnyRow, table: &str, columns: &[String], out: &mut Vec<u8>) -> anyhow::Result<()> {
    use sqlx::ValueRef;
    let mut writer = RowWriter::start(out);
    for (index, column) in columns.iter().enumerate() {
        if row.try_get_raw(index)?.is_null() {
            writer.null();
        } else if let Ok(value) = row.try_get::<i64, _>(index) {
            writer.integer(value);
        } else if let Ok(text) = row.try_get::<String, _>(index) {
            writer.text(&text);
        } else {
            anyhow::bail!("table {table} column {column} holds a value that is neither BIGINT nor TEXT; exports carry integers, text and NULL");
        }
    }
    writer.finish();
    Ok(())
}

/// Starts a read-only snapshot: every table read in it is from one instant.
pub async fn begin_snapshot(
    pool: &AnyPool,
    kind: StoreKind,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if kind == StoreKind::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    }
    Ok(tx)
}

/// Writes one region's export: the queued commands given, then every table, read in one
/// snapshot, then the end mark. Answers each table's sum.
pub async fn export(
    database: &Database,
    queued: crate::spool::QueueSpool,
    out: &mut SealedWriter,
    progress: &dyn Fn(u64),
) -> anyhow::Result<BTreeMap<String, TableSum>> {
    // In bounded lines, read back from the scratch file a line at a time.
    let mut queued = queued.commands()?;
    while let Some(line) = queued.next_queue_line()? {
        out.write(&line).await?;
    }
    let sums = match database {
        Database::Sqlite(path) => {
            // The reader steps SQLite on its own thread while this task compresses, encrypts and
            // uploads what it has handed over; the bounded channel keeps memory flat.
            let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(EXPORT_CHUNKS_IN_FLIGHT_MAX);
            let path = path.clone();
            let reader = tokio::task::spawn_blocking(move || {
                crate::sqlite::export(&path, |chunk| {
                    sender.blocking_send(chunk).map_err(|_| anyhow::anyhow!("the export's writer stopped"))
                })
            });
            while let Some(chunk) = receiver.recv().await {
                out.write(&chunk).await?;
                progress(out.plain_bytes);
            }
            reader.await??
        }
        Database::Postgres { pool, .. } => export_postgres(pool, out, progress).await?,
    };
    let total_rows: u64 = sums.values().map(|sum| sum.rows).sum();
    let end =
        serde_json::to_string(&Line::End { end: EndMark { tables: sums.len() as u64, rows: total_rows } })? + "\n";
    out.write(end.as_bytes()).await?;
    progress(out.plain_bytes);
    Ok(sums)
}

async fn export_postgres(
    pool: &AnyPool,
    out: &mut SealedWriter,
    progress: &dyn Fn(u64),
) -> anyhow::Result<BTreeMap<String, TableSum>> {
    let kind = StoreKind::Postgres;
    let mut tx = begin_snapshot(pool, kind).await?;
    let mut sums = BTreeMap::new();
    for table in tables(&mut tx, kind).await? {
        let columns = columns(&mut tx, kind, &table).await?;
        let header = serde_json::to_string(&Line::Table { table: table.clone(), columns: columns.clone() })? + "\n";
        out.write(header.as_bytes()).await?;
        let select = select_sql(&table, &columns);
        let mut hasher = TableHasher::default();
        let mut buffer = Vec::new();
        let mut line = Vec::new();
        {
            let mut rows = sqlx::query(&select).fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                line.clear();
                write_row(&row, &table, &columns, &mut line)?;
                hasher.add(&line);
                buffer.extend_from_slice(&line);
                buffer.push(b'\n');
                if buffer.len() >= 64 * 1024 {
                    out.write(&buffer).await?;
                    buffer.clear();
                    progress(out.plain_bytes);
                }
            }
        }
        out.write(&buffer).await?;
        sums.insert(table, hasher.finish());
    }
    tx.commit().await?;
    Ok(sums)
}

/// The sums of the tables now in a store (to check a restore against its manifest).
pub async fn sums(database: &Database, only: &[String]) -> anyhow::Result<BTreeMap<String, TableSum>> {
    let pool = match database {
        Database::Sqlite(path) => {
            let (path, only) = (path.clone(), only.to_vec());
            return tokio::task::spawn_blocking(move || crate::sqlite::sums(&path, &only)).await?;
        }
        Database::Postgres { pool, .. } => pool,
    };
    let kind = StoreKind::Postgres;
    let mut tx = begin_snapshot(pool, kind).await?;
    let mut sums = BTreeMap::new();
    let mut line = Vec::new();
    for table in only {
        let columns = columns(&mut tx, kind, table).await?;
        let select = select_sql(table, &columns);
        let mut hasher = TableHasher::default();
        let mut rows = sqlx::query(&select).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            line.clear();
            write_row(&row, table, &columns, &mut line)?;
            hasher.add(&line);
        }
        drop(rows);
        sums.insert(table.clone(), hasher.finish());
    }
    tx.commit().await?;
    Ok(sums)
}

/// Imports an export (its decrypted, decompressed lines) into a new store the binary's
/// migrations created, in one transaction: each table's rows replace what the migrations put
/// there. Answers the queued commands it carried, spooled to a scratch file.
pub async fn import(
    database: &Database,
    lines: Box<dyn BufRead + Send>,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> anyhow::Result<(crate::spool::QueueSpool, EndMark)> {
    match database {
        Database::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || crate::sqlite::import_into_new(&path, lines, &progress)).await?
        }
        Database::Postgres { url, .. } => import_postgres(url, lines, &progress).await,
    }
}

async fn import_postgres(
    url: &str,
    mut lines: Box<dyn BufRead + Send>,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<(crate::spool::QueueSpool, EndMark)> {
    use sqlx::Connection;
    let mut connection = sqlx::postgres::PgConnection::connect(url).await?;
    let mut tx = connection.begin().await?;
    let target_tables = pg_names(
        &mut tx,
        "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
        None,
    )
    .await?;
    let mut queued = crate::spool::QueueSpool::new()?;
    let mut rows_done = 0u64;
    let mut end = None;
    let mut line = Vec::with_capacity(64 * 1024);
    // After a table's rows, the line that ended them has been read already.
    let mut have_line = false;
    loop {
        if !have_line && !next_line(&mut lines, &mut line)? {
            break;
        }
        have_line = false;
        anyhow::ensure!(end.is_none(), "the export has data after its end mark");
        anyhow::ensure!(line[0] != b'[', "a row before any table");
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
                let target_columns = pg_names(
                    &mut tx,
                    "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1",
                    Some(&table),
                )
                .await?;
                for column in &columns {
                    anyhow::ensure!(
                        target_columns.contains(column),
                        "table {table}: column {column} does not exist here"
                    );
                }
                sqlx::query(&format!("DELETE FROM {}", quote(&table))).execute(&mut *tx).await?;
                let statement = format!(
                    "COPY {} ({}) FROM STDIN",
                    quote(&table),
                    columns.iter().map(|column| quote(column)).collect::<Vec<_>>().join(", ")
                );
                let mut sink = tx.copy_in_raw(&statement).await?;
                let mut buffer: Vec<u8> = Vec::with_capacity(COPY_CHUNK_BYTES + 64 * 1024);
                let copied: anyhow::Result<()> = async {
                    loop {
                        if !next_line(&mut lines, &mut line)? {
                            break;
                        }
                        if line[0] != b'[' {
                            have_line = true;
                            break;
                        }
                        let cells = parse_row(&line)
                            .map_err(|error| anyhow::anyhow!("a row of {table} does not parse: {error}"))?;
                        anyhow::ensure!(
                            cells.len() == columns.len(),
                            "a row of {table} has {} values for {} columns",
                            cells.len(),
                            columns.len()
                        );
                        copy_text_row(&cells, &mut buffer);
                        rows_done += 1;
                        if buffer.len() >= COPY_CHUNK_BYTES {
                            sink.send(std::mem::take(&mut buffer)).await?;
                            progress(rows_done);
                        }
                    }
                    if !buffer.is_empty() {
                        sink.send(buffer).await?;
                    }
                    Ok(())
                }
                .await;
                match copied {
                    Ok(()) => {
                        sink.finish().await.map_err(|error| anyhow::anyhow!("restoring {table}: {error}"))?;
                    }
                    Err(error) => {
                        let _ = sink.abort("the export could not be read").await;
                        return Err(error.context(format!("restoring {table}")));
                    }
                }
            }
        }
    }
    let end = end.ok_or_else(|| anyhow::anyhow!("the export is truncated: it has no end mark"))?;
    anyhow::ensure!(end.rows == rows_done, "the export says {} rows, {rows_done} were read", end.rows);
    // Sequences continue after the restored rows. (Only columns that have one are asked: an
    // error would abort the transaction, and COMMIT would then roll it back.)
    let serial = pg_names(
        &mut tx,
        "SELECT CAST(table_name AS TEXT) FROM information_schema.columns \
         WHERE table_schema = current_schema() AND column_name = 'seq' AND column_default LIKE 'nextval%'",
        None,
    )
    .await?;
    for table in serial {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence($1, 'seq'), COALESCE((SELECT MAX(seq) FROM {}), 0) + 1, false)",
            quote(&table)
        ))
        .bind(&table)
        .fetch_one(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    progress(rows_done);
    Ok((queued, end))
}

/// Reads the next non-empty line of an export into `line`, without its newline; false at the end.
fn next_line(lines: &mut dyn BufRead, line: &mut Vec<u8>) -> anyhow::Result<bool> {
    loop {
        line.clear();
        if lines.read_until(b'\n', line).map_err(|error| anyhow::anyhow!("reading the export: {error}"))? == 0 {
            return Ok(false);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if !line.is_empty() {
            return Ok(true);
        }
    }
}

/// The first column of a PostgreSQL query's rows, as text.
async fn pg_names(
    connection: &mut sqlx::postgres::PgConnection,
    sql: &str,
    parameter: Option<&str>,
) -> Result<Vec<String>, sqlx::Error> {
    let mut query = sqlx::query_scalar::<_, String>(sql);
    if let Some(parameter) = parameter {
        query = query.bind(parameter.to_string());
    }
    query.fetch_all(connection).await
}

/// One row in COPY's text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_text_row(cells: &[Cell], out: &mut Vec<u8>) {
    for (index, cell) in cells.iter().enumerate() {
        if index > 0 {
            out.push(b'\t');
        }
        match cell {
            Cell::Integer(value) => out.extend_from_slice(itoa::Buffer::new().format(*value).as_bytes()),
            Cell::Null => out.extend_from_slice(b"\\N"),
            Cell::Text(text) => {
                for &byte in text.as_bytes() {
                    match byte {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        other => out.push(other),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut out = Vec::new();
        let cells = [Cell::Integer(-7), Cell::Text("a\tb\nc\\d\re \\N".into()), Cell::Null, Cell::Text("".into())];
        copy_text_row(&cells, &mut out);
        assert_eq!(out, b"-7\ta\\tb\\nc\\\\d\\re \\\\N\t\\N\t\n");
    }
}
