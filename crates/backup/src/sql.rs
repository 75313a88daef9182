//! The SQL both sides of the export build (sqlx's for PostgreSQL in `db`, rusqlite's for SQLite
//! in `sqlite`): which tables are left out, quoting, the SELECT of a table's columns.

/// Tables the export leaves out: migrations are re-run by the restoring binary.
pub(crate) const SKIPPED_TABLES: [&str; 1] = ["rn_migrations"];

/// Table and column names come from the database itself; quoted anyway.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `SELECT` of the named columns of a table.
pub(crate) fn select_sql(table: &str, columns: &[String]) -> String {
    format!(
        "SELECT {} FROM {}",
        columns.iter().map(|column| quote(column)).collect::<Vec<_>>().join(", "),
        quote(table)
    )
}
