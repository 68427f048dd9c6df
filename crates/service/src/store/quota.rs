//! The daily builds quota: creations are counted per tenant and UTC day in
//! a table of their own, so deleting a build gives nothing back.

use rusqlite::{params, Connection, OptionalExtension};

use super::{day_start_ms, exec, row};

/// Builds `tenant` created today. A database from before the count was
/// kept has today's builds that still exist as its count.
pub(super) fn created_today(c: &Connection, tenant: &str) -> rusqlite::Result<i64> {
    let day = day_start_ms();
    let counted: Option<i64> = row(
        c,
        "SELECT count FROM daily_creations WHERE tenant_id = ?1 AND day_ms = ?2",
        params![tenant, day],
        |r| r.get(0),
    )
    .optional()?;
    match counted {
        Some(n) => Ok(n),
        None => row(
            c,
            "SELECT COUNT(*) FROM builds WHERE tenant_id = ?1 AND created_ms >= ?2",
            params![tenant, day],
            |r| r.get(0),
        ),
    }
}

/// Records that `tenant` has created `count` builds today; earlier days'
/// counts go (nothing reads them).
pub(super) fn count_creation(c: &Connection, tenant: &str, count: i64) -> rusqlite::Result<()> {
    let day = day_start_ms();
    exec(
        c,
        "INSERT INTO daily_creations (tenant_id, day_ms, count) VALUES (?1, ?2, ?3)
         ON CONFLICT (tenant_id, day_ms) DO UPDATE SET count = excluded.count",
        params![tenant, day, count],
    )?;
    exec(
        c,
        "DELETE FROM daily_creations WHERE tenant_id = ?1 AND day_ms < ?2",
        params![tenant, day],
    )?;
    Ok(())
}
