//! Builds: made, listed, moved from state to state (each move recorded,
//! its webhook deliveries written in the same transaction, and told to
//! whoever observes the store), and what they used.

use rusqlite::{params, OptionalExtension};

use super::observe::Transition;
use super::{
    build_row, exec, now_ms, outbox, quota, row, BuildRow, NewBuild, Result, Stats, Store,
    StoreError, TenantUsage, Usage, BUILD_COLUMNS,
};
use crate::state::State;

impl Store {
    /// Adds `f` to what hears of every transition from now on.
    pub fn observe(&self, f: impl Fn(&Transition) + Send + Sync + 'static) {
        self.observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    fn tell(&self, t: &Transition) {
        for f in self
            .observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f(t);
        }
    }

    /// Records a new QUEUED build, checking the tenant's daily and storage
    /// quotas in the same transaction (so concurrent calls cannot both pass).
    pub fn insert_build(&self, b: &NewBuild) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let today = quota::created_today(&tx, b.tenant_id)?;
        if today >= i64::from(b.daily_limit) {
            return Err(StoreError::Conflict(format!(
                "daily builds quota reached: {today} of {} builds today (UTC)",
                b.daily_limit
            )));
        }
        let used = super::uploads::storage_used(&tx, b.tenant_id)?;
        if used as u64 >= b.storage_limit {
            return Err(StoreError::Conflict(format!(
                "storage quota used up: {used} of {} bytes; delete builds to free space",
                b.storage_limit
            )));
        }
        let now = now_ms();
        exec(&tx,
            "INSERT INTO builds (id, tenant_id, config_json, creds, state, created_ms, updated_ms, max_interruptions, source_type)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
            params![b.id, b.tenant_id, b.config_json, b.creds, State::Queued.name(), now, b.max_interruptions, b.source_type],
        )?;
        exec(
            &tx,
            "INSERT INTO transitions (build_id, state, at_ms) VALUES (?1, ?2, ?3)",
            params![b.id, State::Queued.name(), now],
        )?;
        exec(
            &tx,
            "INSERT INTO logs (build_id, at_ms, level, message, component) VALUES (?1, ?2, 'info', ?3, 'builderd')",
            params![b.id, now, b.log],
        )?;
        quota::count_creation(&tx, b.tenant_id, today + 1)?;
        let hooks = outbox::on_transition(&tx, b.id, State::Queued, true)?;
        tx.commit()?;
        drop(conn);
        self.tell(&Transition {
            build_id: b.id.to_string(),
            from: None,
            to: State::Queued,
            source_type: b.source_type.to_string(),
            tier: b.tier.name().to_string(),
        });
        if hooks > 0 {
            self.outbox_wake.notify_one();
        }
        Ok(now)
    }

    pub fn build(&self, tenant_id: &str, id: &str) -> Result<Option<BuildRow>> {
        self.read(|c| {
            row(
                c,
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?1 AND tenant_id = ?2"),
                params![id, tenant_id],
                build_row,
            )
            .optional()
        })
    }

    /// Any tenant's build, for the server's own use.
    pub(crate) fn build_by_id(&self, id: &str) -> Result<Option<BuildRow>> {
        self.read(|c| {
            row(
                c,
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?1"),
                [id],
                build_row,
            )
            .optional()
        })
    }

    /// A build's state alone (None once it is deleted).
    pub fn state(&self, id: &str) -> Result<Option<State>> {
        let name: Option<String> = self.read(|c| {
            row(c, "SELECT state FROM builds WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })?;
        Ok(name.and_then(|n| State::parse(&n)))
    }

    /// A tenant's builds, newest first, after `before_seq` (a page token).
    pub fn list_builds(
        &self,
        tenant_id: &str,
        state: Option<State>,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<BuildRow>, i64)> {
        let state = state.map(|s| s.name());
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {BUILD_COLUMNS} FROM builds WHERE tenant_id = ?1
             AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR seq < ?3)
             ORDER BY seq DESC LIMIT ?4"
            ))?;
            let rows = stmt
                .query_map(
                    params![tenant_id, state, before_seq, limit as i64],
                    build_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let total = row(
                conn,
                "SELECT COUNT(*) FROM builds WHERE tenant_id = ?1 AND (?2 IS NULL OR state = ?2)",
                params![tenant_id, state],
                |r| r.get(0),
            )?;
            Ok((rows, total))
        })
    }

    pub fn transitions(&self, id: &str) -> Result<Vec<(State, i64)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT state, at_ms FROM transitions WHERE build_id = ?1 ORDER BY rowid",
            )?;
            let rows = stmt.query_map([id], |r| {
                let s: String = r.get(0)?;
                Ok((State::parse(&s).unwrap_or(State::Failed), r.get(1)?))
            })?;
            rows.collect()
        })
    }

    /// Moves a build to `to`, only if it is in one of `from` (so a cancel and
    /// a finishing run cannot both win). Answers whether it moved.
    pub fn transition(&self, id: &str, from: &[State], to: State) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: Option<(String, String, String, Option<i64>)> = row(
            &tx,
            "SELECT b.state, b.source_type, t.tier,
                    (SELECT MAX(at_ms) FROM transitions WHERE build_id = b.id)
             FROM builds b JOIN tenants t ON t.id = b.tenant_id WHERE b.id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
        let Some((current, source_type, tier, since)) = current else {
            return Ok(false);
        };
        let Some(current) = State::parse(&current) else {
            return Ok(false);
        };
        if !from.contains(&current) {
            return Ok(false);
        }
        let now = now_ms();
        let started = if to == State::Running {
            Some(now)
        } else {
            None
        };
        let finished = to.is_terminal().then_some(now);
        // A build that has ended pulls no more: its registry credentials
        // leave the database with its last state change.
        exec(
            &tx,
            "UPDATE builds SET state = ?2, updated_ms = ?3,
                 started_ms = COALESCE(?4, started_ms),
                 attempts = attempts + (?4 IS NOT NULL),
                 finished_ms = ?5,
                 creds = CASE WHEN ?5 IS NULL THEN creds END
             WHERE id = ?1",
            params![id, to.name(), now, started, finished],
        )?;
        exec(
            &tx,
            "INSERT INTO transitions (build_id, state, at_ms) VALUES (?1, ?2, ?3)",
            params![id, to.name(), now],
        )?;
        let hooks = outbox::on_transition(&tx, id, to, false)?;
        tx.commit()?;
        // Observers may read the build again: not while holding the writer.
        drop(conn);
        self.tell(&Transition {
            build_id: id.to_string(),
            from: Some((current, now - since.unwrap_or(now))),
            to,
            source_type,
            tier,
        });
        if hooks > 0 {
            self.outbox_wake.notify_one();
        }
        self.bells.ring(id);
        Ok(true)
    }

    pub fn set_progress(&self, id: &str, progress_json: &str) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE builds SET progress_json = ?2, updated_ms = ?3 WHERE id = ?1",
            params![id, progress_json, now_ms()],
        )?;
        Ok(())
    }

    pub fn set_error(&self, id: &str, category: &str, message: &str) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE builds SET error_category = ?2, error_message = ?3 WHERE id = ?1",
            params![id, category, message],
        )?;
        Ok(())
    }

    pub fn set_artifact(&self, id: &str, artifact_json: &str, bytes: i64) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE builds SET artifact_json = ?2, artifact_bytes = ?3 WHERE id = ?1",
            params![id, artifact_json, bytes],
        )?;
        Ok(())
    }

    pub fn delete_build(&self, id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        exec(&tx, "DELETE FROM logs WHERE build_id = ?1", [id])?;
        exec(&tx, "DELETE FROM transitions WHERE build_id = ?1", [id])?;
        exec(&tx, "DELETE FROM retries WHERE build_id = ?1", [id])?;
        exec(&tx, "DELETE FROM builds WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    /// Queued builds that may start now (not waiting for a retry), oldest first.
    pub fn due(&self) -> Result<Vec<BuildRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {BUILD_COLUMNS} FROM builds WHERE state = 'QUEUED'
                 AND (not_before_ms IS NULL OR not_before_ms <= ?1) ORDER BY seq"
            ))?;
            let rows = stmt.query_map([now_ms()], build_row)?;
            rows.collect()
        })
    }

    /// When the next build waiting for a retry may start.
    pub fn next_retry_ms(&self) -> Result<Option<i64>> {
        self.read(|c| {
            row(
                c,
                "SELECT MIN(not_before_ms) FROM builds WHERE state = 'QUEUED' AND not_before_ms > ?1",
                [now_ms()],
                |r| r.get(0),
            )
        })
    }

    /// Puts an active build back in the queue, not to start before `not_before_ms`.
    pub fn retry_later(&self, id: &str, not_before_ms: i64) -> Result<bool> {
        if !self.transition(id, &State::ACTIVE, State::Queued)? {
            return Ok(false);
        }
        exec(
            &self.conn(),
            "UPDATE builds SET not_before_ms = ?2 WHERE id = ?1",
            params![id, not_before_ms],
        )?;
        Ok(true)
    }

    /// Adds one run's usage to the build's.
    pub fn add_usage(&self, id: &str, u: &Usage) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE builds SET cpu_ms = cpu_ms + ?2,
                 peak_memory_bytes = MAX(peak_memory_bytes, ?3),
                 disk_written_bytes = disk_written_bytes + ?4
             WHERE id = ?1",
            params![id, u.cpu_ms, u.peak_memory_bytes, u.disk_written_bytes],
        )?;
        Ok(())
    }

    pub fn set_cache_hit(&self, id: &str) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE builds SET cache_hit = 1 WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Builds in one of `states`, oldest first.
    pub fn builds_in(&self, states: &[State]) -> Result<Vec<BuildRow>> {
        let names: Vec<String> = states.iter().map(|s| format!("'{}'", s.name())).collect();
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {BUILD_COLUMNS} FROM builds WHERE state IN ({}) ORDER BY seq",
                names.join(",")
            ))?;
            let rows = stmt.query_map([], build_row)?;
            rows.collect()
        })
    }

    /// After a crash: each build that was running goes back to the queue
    /// (counted as an interruption), or fails when it has been interrupted
    /// more often than its retry policy allows. Answers (requeued, failed).
    pub fn recover_interrupted(&self) -> Result<(Vec<String>, Vec<String>)> {
        let running = self.builds_in(&State::ACTIVE)?;
        let (mut requeued, mut failed) = (vec![], vec![]);
        for b in running {
            let from = [b.state];
            if b.interruptions + 1 > b.max_interruptions {
                if self.transition(&b.id, &from, State::Failed)? {
                    self.set_error(
                        &b.id,
                        "build",
                        &format!(
                            "interrupted {} times by server restarts, more than the retry policy allows ({}); create the build again",
                            b.interruptions + 1,
                            b.max_interruptions
                        ),
                    )?;
                    failed.push(b.id);
                }
            } else if self.transition(&b.id, &from, State::Queued)? {
                exec(
                    &self.conn(),
                    "UPDATE builds SET interruptions = interruptions + 1 WHERE id = ?1",
                    [&b.id],
                )?;
                requeued.push(b.id);
            }
        }
        Ok((requeued, failed))
    }

    /// The tenant's usage now.
    pub fn usage(&self, tenant_id: &str) -> Result<TenantUsage> {
        let active: Vec<String> = State::ACTIVE
            .iter()
            .map(|s| format!("'{}'", s.name()))
            .collect();
        self.read(|c| {
            let (running, queued) = row(
                c,
                &format!(
                    "SELECT
                   COALESCE(SUM(state IN ({})), 0),
                   COALESCE(SUM(state = 'QUEUED'), 0)
                 FROM builds WHERE tenant_id = ?1",
                    active.join(",")
                ),
                params![tenant_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let storage_bytes = super::uploads::storage_used(c, tenant_id)?;
            Ok(TenantUsage {
                running,
                queued,
                created_today: quota::created_today(c, tenant_id)?,
                storage_bytes,
            })
        })
    }

    /// Counts by final state, the average completed build time and the
    /// storage used, over one tenant's builds.
    pub fn stats(&self, tenant_id: &str) -> Result<Stats> {
        self.read(|conn| {
        let mut stats = Stats::default();
        let mut stmt =
            conn.prepare_cached("SELECT state, COUNT(*) FROM builds WHERE tenant_id = ?1 GROUP BY state")?;
        for row in stmt.query_map([tenant_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (state, n) = row?;
            stats.total += n;
            match State::parse(&state) {
                Some(State::Completed) => stats.completed += n,
                Some(State::Failed) => stats.failed += n,
                Some(State::Cancelled) => stats.cancelled += n,
                Some(State::Timeout) => stats.timed_out += n,
                Some(s) if s != State::Queued => stats.active += n,
                _ => {}
            }
        }
        (stats.average_ms, stats.artifact_bytes) = row(conn,
            "SELECT COALESCE(AVG(CASE WHEN state = 'COMPLETED' THEN finished_ms - started_ms END), 0),
                    COALESCE(SUM(artifact_bytes), 0)
             FROM builds WHERE tenant_id = ?1",
            [tenant_id],
            |r| Ok((r.get::<_, f64>(0)? as i64, r.get(1)?)),
        )?;
        Ok(stats)
        })
    }
}
