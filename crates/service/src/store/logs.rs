//! A build's log lines and its retries.

use rusqlite::params;

use super::{exec, now_ms, row, LogLine, Result, Retry, Store};

impl Store {
    pub fn log(&self, id: &str, level: &str, message: &str, component: &str) -> Result<()> {
        exec(&self.conn(),
            "INSERT INTO logs (build_id, at_ms, level, message, component) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, now_ms(), level, message, component],
        )?;
        self.bells.ring(id);
        Ok(())
    }

    pub fn logs_after(&self, id: &str, after_seq: i64) -> Result<Vec<LogLine>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, at_ms, level, message, component FROM logs
             WHERE build_id = ?1 AND seq > ?2 ORDER BY seq LIMIT 1000",
            )?;
            let rows = stmt
                .query_map(params![id, after_seq], |r| {
                    Ok(LogLine {
                        seq: r.get(0)?,
                        at_ms: r.get(1)?,
                        level: r.get(2)?,
                        message: r.get(3)?,
                        component: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    pub fn add_retry(&self, id: &str, r: &Retry) -> Result<()> {
        exec(
            &self.conn(),
            "INSERT INTO retries (build_id, at_ms, attempt, cause, message, delay_ms, scope)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, r.at_ms, r.attempt, r.cause, r.message, r.delay_ms, r.scope],
        )?;
        Ok(())
    }

    /// The build's `newest` latest retries, oldest of them first.
    pub fn retries(&self, id: &str, newest: usize) -> Result<Vec<Retry>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT * FROM (SELECT at_ms, attempt, cause, message, delay_ms, scope, rowid AS n
                 FROM retries WHERE build_id = ?1 ORDER BY rowid DESC LIMIT ?2) ORDER BY n",
            )?;
            let rows = stmt.query_map(params![id, newest as i64], |r| {
                Ok(Retry {
                    at_ms: r.get(0)?,
                    attempt: r.get(1)?,
                    cause: r.get(2)?,
                    message: r.get(3)?,
                    delay_ms: r.get(4)?,
                    scope: r.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    /// How many times the build was run again for a temporary failure.
    pub fn build_retries(&self, id: &str) -> Result<u32> {
        self.read(|c| {
            row(
                c,
                "SELECT COUNT(*) FROM retries WHERE build_id = ?1 AND scope = 'build'",
                [id],
                |r| r.get(0),
            )
        })
    }
}
