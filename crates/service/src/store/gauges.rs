//! What the metrics' gauges read at each scrape.

use super::{Result, Store};
use crate::state::State;
use crate::store::CacheKind;
use crate::tier::Tier;

impl Store {
    /// Unfinished builds now, by state and tier.
    pub fn unfinished_counts(&self) -> Result<Vec<(State, Tier, i64)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT b.state, t.tier, COUNT(*) FROM builds b JOIN tenants t ON t.id = b.tenant_id
                 WHERE b.state IN ('QUEUED', 'RUNNING', 'PREPARING', 'DOWNLOADING', 'BUILDING',
                                   'OPTIMIZING', 'PACKAGING')
                 GROUP BY b.state, t.tier",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })?;
            let rows: Vec<(String, String, i64)> = rows.collect::<rusqlite::Result<_>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(s, t, n)| Some((State::parse(&s)?, Tier::parse(&t)?, n)))
                .collect())
        })
    }

    /// Webhook deliveries neither made nor given up.
    pub fn pending_deliveries(&self) -> Result<i64> {
        self.read(|c| {
            super::row(
                c,
                "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_ms IS NULL AND failed_ms IS NULL",
                [],
                |r| r.get(0),
            )
        })
    }

    /// Bytes in the cache by kind.
    pub fn cache_bytes(&self) -> Result<Vec<(CacheKind, i64)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT kind, COALESCE(SUM(bytes), 0) FROM cache_entries GROUP BY kind",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((CacheKind::parse(&r.get::<_, String>(0)?), r.get(1)?))
            })?;
            rows.collect()
        })
    }

    /// Bytes of the artifacts builds keep, over all tenants.
    pub fn artifact_bytes(&self) -> Result<i64> {
        self.read(|c| {
            super::row(
                c,
                "SELECT COALESCE(SUM(artifact_bytes), 0) FROM builds",
                [],
                |r| r.get(0),
            )
        })
    }
}
