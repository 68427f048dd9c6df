//! The statements' helpers every table's module uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

/// A statement run with its compiled form kept: the API runs the same few
/// statements over and over, and parsing them again cost more than running them.
pub(crate) fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// The one row of a query, its statement kept as `exec` keeps it.
pub(crate) fn row<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

/// The start of today (UTC), where the daily builds quota counts from.
pub(crate) fn day_start_ms() -> i64 {
    let now = now_ms();
    now - now.rem_euclid(86_400_000)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}
