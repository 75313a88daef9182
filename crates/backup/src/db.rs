//! Reading a region's database into the portable export, and writing an export into a store.
//! Both go through the platform's sqlx `Any` pools, so SQLite and PostgreSQL share the code.

use crate::format::{row_json, EndMark, Line, TableHasher, TableSum};
use crate::repo::SealedWriter;
use futures::TryStreamExt;
use rananeeti_platform::sqlx::{self, AnyConnection, AnyPool, Row};
use rananeeti_platform::StoreKind;
use serde_json::Value;
use std::collections::BTreeMap;

/// Tables the export leaves out: migrations are re-run by the restoring binary.
const SKIPPED_TABLES: [&str; 1] = ["rn_migrations"];
/// Rows per INSERT statement when importing. Kept small: sqlx's SQLite driver looks up each
/// parameter's name, which SQLite finds by a linear scan, so a statement's binding cost grows with
/// the square of its parameters (200 rows of 12 columns spent most of a restore there).
const IMPORT_BATCH_ROWS: usize = 16;

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

/// Table and column names come from the database itself; quoted anyway.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn value_at(row: &sqlx::any::AnyRow, index: usize) -> Value {
    if let Ok(value) = row.try_get::<Option<i64>, _>(index) {
        return value.map(Value::from).unwrap_or(Value::Null);
    }
    match row.try_get::<Option<String>, _>(index) {
        Ok(Some(text)) => Value::String(text),
        _ => Value::Null,
    }
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
    pool: &AnyPool,
    kind: StoreKind,
    queued: &[Value],
    out: &mut SealedWriter,
    progress: &dyn Fn(u64),
) -> anyhow::Result<BTreeMap<String, TableSum>> {
    let mut tx = begin_snapshot(pool, kind).await?;
    let mut sums = BTreeMap::new();
    let mut total_rows = 0u64;
    let queue_line = serde_json::to_string(&Line::Queue { queue: queued.to_vec() })? + "\n";
    out.write(queue_line.as_bytes()).await?;
    for table in tables(&mut tx, kind).await? {
        let columns = columns(&mut tx, kind, &table).await?;
        let header = serde_json::to_string(&Line::Table { table: table.clone(), columns: columns.clone() })? + "\n";
        out.write(header.as_bytes()).await?;
        let select = format!(
            "SELECT {} FROM {}",
            columns.iter().map(|column| quote(column)).collect::<Vec<_>>().join(", "),
            quote(&table)
        );
        let mut hasher = TableHasher::default();
        let mut buffer = String::new();
        {
            let mut rows = sqlx::query(&select).fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                let values: Vec<Value> = (0..columns.len()).map(|index| value_at(&row, index)).collect();
                let line = row_json(&values);
                hasher.add(&line);
                buffer.push_str(&line);
                buffer.push('\n');
                if buffer.len() >= 64 * 1024 {
                    out.write(buffer.as_bytes()).await?;
                    buffer.clear();
                    progress(out.plain_bytes);
                }
            }
        }
        out.write(buffer.as_bytes()).await?;
        let sum = hasher.finish();
        total_rows += sum.rows;
        sums.insert(table, sum);
    }
    tx.commit().await?;
    let end =
        serde_json::to_string(&Line::End { end: EndMark { tables: sums.len() as u64, rows: total_rows } })? + "\n";
    out.write(end.as_bytes()).await?;
    progress(out.plain_bytes);
    Ok(sums)
}

/// The sums of the tables now in a store (to check a restore against its manifest).
pub async fn sums(pool: &AnyPool, kind: StoreKind, only: &[String]) -> anyhow::Result<BTreeMap<String, TableSum>> {
    let mut tx = begin_snapshot(pool, kind).await?;
    let mut sums = BTreeMap::new();
    for table in only {
        let columns = columns(&mut tx, kind, table).await?;
        let select = format!(
            "SELECT {} FROM {}",
            columns.iter().map(|column| quote(column)).collect::<Vec<_>>().join(", "),
            quote(table)
        );
        let mut hasher = TableHasher::default();
        let mut rows = sqlx::query(&select).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let values: Vec<Value> = (0..columns.len()).map(|index| value_at(&row, index)).collect();
            hasher.add(&row_json(&values));
        }
        drop(rows);
        sums.insert(table.clone(), hasher.finish());
    }
    tx.commit().await?;
    Ok(sums)
}

/// Imports an export (its decrypted, decompressed lines) into a migrated, empty-or-seeded store,
/// in one transaction: each table's rows replace what the migrations put there. Answers the
/// queued commands it carried.
pub async fn import(
    pool: &AnyPool,
    kind: StoreKind,
    lines: &mut dyn Iterator<Item = std::io::Result<String>>,
    progress: &dyn Fn(u64),
) -> anyhow::Result<(Vec<Value>, EndMark)> {
    let mut tx = pool.begin().await?;
    let target_tables = tables(&mut tx, kind).await?;
    let mut queued = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    let mut batch: Vec<Vec<Value>> = Vec::new();
    let mut rows_done = 0u64;
    let mut end = None;
    for line in lines {
        let line = line.map_err(|error| anyhow::anyhow!("reading the export: {error}"))?;
        if line.is_empty() {
            continue;
        }
        anyhow::ensure!(end.is_none(), "the export has data after its end mark");
        if line.starts_with('[') {
            let (table, columns) = current.as_ref().ok_or_else(|| anyhow::anyhow!("a row before any table"))?;
            let values: Vec<Value> = serde_json::from_str(&line)
                .map_err(|error| anyhow::anyhow!("a row of {table} does not parse: {error}"))?;
            anyhow::ensure!(
                values.len() == columns.len(),
                "a row of {table} has {} values for {} columns",
                values.len(),
                columns.len()
            );
            batch.push(values);
            if batch.len() >= IMPORT_BATCH_ROWS {
                insert(&mut tx, table, columns, &batch).await?;
                rows_done += batch.len() as u64;
                batch.clear();
                progress(rows_done);
            }
            continue;
        }
        let parsed: Line = serde_json::from_str(&line)
            .map_err(|error| anyhow::anyhow!("a line of the export does not parse: {error}"))?;
        if let Some((table, columns)) = current.take() {
            insert(&mut tx, &table, &columns, &batch).await?;
            rows_done += batch.len() as u64;
            batch.clear();
        }
        match parsed {
            Line::Queue { queue } => queued.extend(queue),
            Line::End { end: mark } => end = Some(mark),
            Line::Table { table, columns } => {
                anyhow::ensure!(
                    target_tables.contains(&table),
                    "the backup has table {table}, which this version of rananeeti does not create"
                );
                let target_columns = self::columns(&mut tx, kind, &table).await?;
                for column in &columns {
                    anyhow::ensure!(
                        target_columns.contains(column),
                        "table {table}: column {column} does not exist here"
                    );
                }
                sqlx::query(&format!("DELETE FROM {}", quote(&table))).execute(&mut *tx).await?;
                current = Some((table, columns));
            }
        }
    }
    let end = end.ok_or_else(|| anyhow::anyhow!("the export is truncated: it has no end mark"))?;
    anyhow::ensure!(end.rows == rows_done, "the export says {} rows, {rows_done} were read", end.rows);
    if kind == StoreKind::Postgres {
        // Sequences continue after the restored rows. (Only columns that have one are asked:
        // an error would abort the transaction, and COMMIT would then roll it back.)
        let serial = sqlx::query(
            "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND column_name = 'seq' AND column_default LIKE 'nextval%'",
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in serial {
            let table: String = row.try_get("name")?;
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence($1, 'seq'), COALESCE((SELECT MAX(seq) FROM {}), 0) + 1, false)",
                quote(&table)
            ))
            .bind(&table)
            .fetch_one(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok((queued, end))
}

async fn insert(tx: &mut AnyConnection, table: &str, columns: &[String], rows: &[Vec<Value>]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(table),
        columns.iter().map(|column| quote(column)).collect::<Vec<_>>().join(", ")
    );
    let mut index = 1;
    for (row_index, row) in rows.iter().enumerate() {
        if row_index > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for value_index in 0..row.len() {
            if value_index > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${index}"));
            index += 1;
        }
        sql.push(')');
    }
    let mut query = sqlx::query(&sql);
    for row in rows {
        for value in row {
            query = match value {
                Value::Number(number) => {
                    query.bind(number.as_i64().ok_or_else(|| anyhow::anyhow!("{table}: a non-integer number"))?)
                }
                Value::String(text) => query.bind(text.clone()),
                Value::Null => query.bind(Option::<String>::None),
                other => anyhow::bail!("{table}: unexpected value {other}"),
            };
        }
    }
    query.execute(&mut *tx).await.map_err(|error| anyhow::anyhow!("restoring {table}: {error}"))?;
    Ok(())
}
