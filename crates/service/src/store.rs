//! Durable state in SQLite (WAL; every commit synced): tenants, hashed API
//! keys, builds with each state change, and build logs. Several processes may
//! open one database: `builderd tenant create` writes keys while the server
//! runs, and the server reads keys from here on every request.
//!
//! One connection writes (SQLite has one writer at a time anyway); reads go
//! to a pool of read-only connections, which WAL lets see the last commit
//! without waiting for a write in progress, so a burst of builds reporting
//! progress does not hold up the API's reads.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::state::State;
use crate::tier::Tier;

mod bells;
mod gauges;
mod keys;
mod outbox;
mod quota;
mod retention;

pub use keys::KeyInfo;
pub use outbox::{Delivery, Webhook};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    /// Told when a commit wrote webhook deliveries.
    pub outbox_wake: tokio::sync::Notify,
    /// Rung for a build when it logs a line or changes state.
    pub bells: bells::Bells,
    /// Counted as the store records what happens.
    pub metrics: crate::metrics::Metrics,
    /// Where ended builds' traces go, when traces are on.
    pub traces: std::sync::OnceLock<crate::traces::Traces>,
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
}

/// Compiled statements kept per connection: more than the store has.
const STATEMENTS: usize = 64;

/// Idle readers kept open; more are opened when more reads run at once.
const IDLE_READERS: usize = 8;

#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: String,
    pub tier: Tier,
}

/// Who an API key speaks for.
#[derive(Clone, Debug)]
pub enum KeyOwner {
    Operator,
    Tenant(Tenant),
}

/// One build as stored.
#[derive(Clone, Debug)]
pub struct BuildRow {
    pub id: String,
    pub tenant_id: String,
    pub seq: i64,
    /// The config as accepted, secrets removed (proto3 JSON).
    pub config_json: String,
    /// Registry credentials for the run ("user:pass"), kept so that a build
    /// requeued after a restart can still pull.
    pub creds: Option<String>,
    pub state: State,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub updated_ms: i64,
    pub attempts: i64,
    pub interruptions: i64,
    pub max_interruptions: i64,
    pub progress_json: String,
    pub error_category: Option<String>,
    pub error_message: Option<String>,
    pub artifact_json: Option<String>,
    /// Completed with an artifact from the cache.
    pub cache_hit: bool,
    /// What its artifact files take on disk.
    pub artifact_bytes: i64,
    /// When the retention policy deleted its artifact and logs.
    pub expired_ms: Option<i64>,
    pub usage: Usage,
}

/// What a build's processes used, over all its runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, user and system.
    pub cpu_ms: i64,
    /// The largest resident set of any of its processes.
    pub peak_memory_bytes: i64,
    /// Bytes its processes wrote to storage.
    pub disk_written_bytes: i64,
}

#[derive(Clone, Debug)]
pub struct LogLine {
    pub seq: i64,
    pub at_ms: i64,
    pub level: String,
    pub message: String,
    pub component: String,
}

/// The database holds key hashes, webhook secrets and, while a build
/// runs, its registry credentials: only its owner may read it. SQLite
/// makes the WAL and shared-memory files with the database's mode, so the
/// database is made 0600 before it is opened (and an older one, with its
/// companions, changed to it).
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A statement run with its compiled form kept: the API runs the same few
/// statements over and over, and parsing them again cost more than running them.
fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// The one row of a query, its statement kept as `exec` keeps it.
fn row<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

/// The start of today (UTC), where the daily builds quota counts from.
fn day_start_ms() -> i64 {
    let now = now_ms();
    now - now.rem_euclid(86_400_000)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    tier TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY,
    tenant_id TEXT REFERENCES tenants(id),
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    config_json TEXT NOT NULL,
    creds TEXT,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    updated_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    interruptions INTEGER NOT NULL DEFAULT 0,
    max_interruptions INTEGER NOT NULL,
    progress_json TEXT NOT NULL DEFAULT '{}',
    error_category TEXT,
    error_message TEXT,
    artifact_json TEXT,
    artifact_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS builds_tenant ON builds(tenant_id, seq);
CREATE INDEX IF NOT EXISTS builds_state ON builds(state, seq);
CREATE INDEX IF NOT EXISTS builds_tenant_day ON builds(tenant_id, created_ms);
CREATE TABLE IF NOT EXISTS transitions (
    build_id TEXT NOT NULL,
    state TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_build ON transitions(build_id);
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    component TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_build ON logs(build_id, seq);
CREATE TABLE IF NOT EXISTS retries (
    build_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    cause TEXT NOT NULL,
    message TEXT NOT NULL,
    delay_ms INTEGER NOT NULL,
    scope TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS retries_build ON retries(build_id);
CREATE TABLE IF NOT EXISTS cache_entries (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS blob_leases (
    build_id TEXT NOT NULL,
    digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS blob_leases_digest ON blob_leases(digest);
CREATE INDEX IF NOT EXISTS blob_leases_build ON blob_leases(build_id);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    build_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    headers_json TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    delivered_ms INTEGER,
    failed_ms INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(next_ms)
    WHERE delivered_ms IS NULL AND failed_ms IS NULL;
CREATE TABLE IF NOT EXISTS daily_creations (
    tenant_id TEXT NOT NULL,
    day_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day_ms)
);
";

/// Columns added after a table's first version: table, column, type. A
/// database made before them gets them when it is opened.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // A build waiting for a retry: not to start before this time.
    ("builds", "not_before_ms", "INTEGER"),
    // Completed with an artifact from the cache.
    ("builds", "cache_hit", "INTEGER NOT NULL DEFAULT 0"),
    // The tenant's own webhook (events as a JSON list, headers as an object)
    // and the secret its deliveries are signed with.
    ("tenants", "webhook_url", "TEXT"),
    ("tenants", "webhook_events", "TEXT"),
    ("tenants", "webhook_headers", "TEXT"),
    ("tenants", "webhook_secret", "TEXT"),
    // What the build is made from, for the metrics: docker_image,
    // git_repository or archive.
    (
        "builds",
        "source_type",
        "TEXT NOT NULL DEFAULT 'docker_image'",
    ),
    // What the build's processes used (summed over runs; memory: the peak).
    ("builds", "cpu_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("builds", "peak_memory_bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("builds", "disk_written_bytes", "INTEGER NOT NULL DEFAULT 0"),
    // When the retention policy deleted the build's artifact and logs.
    ("builds", "expired_ms", "INTEGER"),
];

const BUILD_COLUMNS: &str =
    "id, tenant_id, seq, config_json, creds, state, created_ms, started_ms, \
    finished_ms, updated_ms, attempts, interruptions, max_interruptions, progress_json, \
    error_category, error_message, artifact_json, cache_hit, artifact_bytes, expired_ms, \
    cpu_ms, peak_memory_bytes, disk_written_bytes";

fn build_row(r: &rusqlite::Row) -> rusqlite::Result<BuildRow> {
    let state: String = r.get(5)?;
    Ok(BuildRow {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        seq: r.get(2)?,
        config_json: r.get(3)?,
        creds: r.get(4)?,
        state: State::parse(&state).unwrap_or(State::Failed),
        created_ms: r.get(6)?,
        started_ms: r.get(7)?,
        finished_ms: r.get(8)?,
        updated_ms: r.get(9)?,
        attempts: r.get(10)?,
        interruptions: r.get(11)?,
        max_interruptions: r.get(12)?,
        progress_json: r.get(13)?,
        error_category: r.get(14)?,
        error_message: r.get(15)?,
        artifact_json: r.get(16)?,
        cache_hit: r.get(17)?,
        artifact_bytes: r.get(18)?,
        expired_ms: r.get(19)?,
        usage: Usage {
            cpu_ms: r.get(20)?,
            peak_memory_bytes: r.get(21)?,
            disk_written_bytes: r.get(22)?,
        },
    })
}

/// A new build, as CreateBuild accepts it.
pub struct NewBuild<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    /// docker_image, git_repository or archive.
    pub source_type: &'a str,
    /// The tenant's tier, for the metrics.
    pub tier: Tier,
    pub config_json: &'a str,
    pub creds: Option<&'a str>,
    pub max_interruptions: i64,
    /// The tenant's daily quota: the insert fails when it is reached.
    pub daily_limit: u32,
    /// The tenant's storage quota: the insert fails when it is used up.
    pub storage_limit: u64,
    /// The build's first log line.
    pub log: &'a str,
}

fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, name, kind) in ADDED_COLUMNS {
        let have: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, name],
            |r| r.get(0),
        )?;
        if !have {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}

/// What the cache holds: layer and config blobs, by digest, and whole
/// artifacts, by the key of what made them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    Blob,
    Artifact,
}

impl CacheKind {
    pub fn name(self) -> &'static str {
        match self {
            CacheKind::Blob => "blob",
            CacheKind::Artifact => "artifact",
        }
    }

    fn parse(s: &str) -> CacheKind {
        if s == "artifact" {
            CacheKind::Artifact
        } else {
            CacheKind::Blob
        }
    }
}

/// One thing in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub kind: CacheKind,
    /// A blob's digest, an artifact's key.
    pub name: String,
    pub bytes: i64,
    pub last_used_ms: i64,
    /// A blob a running build reads.
    pub in_use: bool,
}

/// One retry of a build, as its status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    pub at_ms: i64,
    /// The attempt that failed (1 for the first).
    pub attempt: i64,
    pub cause: String,
    pub message: String,
    pub delay_ms: i64,
    /// "request": a registry request retried inside the run; "build": the
    /// whole build run again.
    pub scope: String,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        owner_only(path).map_err(|e| {
            StoreError::Conflict(format!("{}: cannot make it private: {e}", path.display()))
        })?;
        let conn = Connection::open(path)?;
        // Another process (`builderd tenant create`) may hold the write lock
        // for a moment.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A build CreateBuild answered for must survive a crash of the machine.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        add_missing_columns(&conn)?;
        Ok(Store {
            outbox_wake: tokio::sync::Notify::new(),
            bells: bells::Bells::default(),
            metrics: crate::metrics::Metrics::default(),
            traces: std::sync::OnceLock::new(),
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The writing connection.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (each call
        // is one statement or one transaction), so the poison is not news.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a read-only connection (one transaction's snapshot per
    /// statement, as with the writer).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(Duration::from_secs(10))?;
                c.set_prepared_statement_cache_capacity(STATEMENTS);
                c
            }
        };
        let result = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        Ok(result?)
    }

    pub fn create_tenant(&self, id: &str, tier: Tier, key_hash: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: bool = row(&tx, "SELECT 1 FROM tenants WHERE id = ?1", [id], |_| {
            Ok(true)
        })
        .optional()?
        .unwrap_or(false);
        if exists {
            return Err(StoreError::Conflict(format!("tenant {id} exists already")));
        }
        let now = now_ms();
        exec(
            &tx,
            "INSERT INTO tenants (id, tier, created_ms, webhook_secret) VALUES (?1, ?2, ?3, ?4)",
            params![id, tier.name(), now, outbox::new_secret()],
        )?;
        exec(
            &tx,
            "INSERT INTO api_keys (hash, tenant_id, created_ms) VALUES (?1, ?2, ?3)",
            params![key_hash, id, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        self.read(|c| {
            row(
                c,
                "SELECT id, tier FROM tenants WHERE id = ?1",
                [id],
                tenant_row,
            )
            .optional()
        })
    }

    pub fn key_owner(&self, key_hash: &str) -> Result<Option<KeyOwner>> {
        // The key and its tenant in one statement: one snapshot, one round.
        type Found = (bool, Option<String>, Option<String>);
        let found: Option<Found> = self.read(|c| {
            row(
                c,
                "SELECT k.tenant_id IS NULL, t.id, t.tier FROM api_keys k
                 LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.hash = ?1",
                [key_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        Ok(match found {
            None => None,
            Some((true, _, _)) => Some(KeyOwner::Operator),
            Some((false, Some(id), Some(tier))) => Some(KeyOwner::Tenant(Tenant {
                id,
                tier: Tier::parse(&tier).unwrap_or(Tier::Free),
            })),
            // A key whose tenant is gone speaks for no one.
            Some((false, _, _)) => None,
        })
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
        let used: i64 = row(
            &tx,
            "SELECT COALESCE(SUM(artifact_bytes), 0) FROM builds WHERE tenant_id = ?1",
            [b.tenant_id],
            |r| r.get(0),
        )?;
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
        self.metrics
            .transition(None, State::Queued, b.source_type, b.tier.name());
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
        // The trace reads the build again: not while holding the writer.
        drop(conn);
        self.metrics.transition(
            Some((current, now - since.unwrap_or(now))),
            to,
            &source_type,
            &tier,
        );
        if to.is_terminal() {
            self.trace_ended(id, &source_type);
        }
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

    /// Records that a build reads these blobs (digest, size): none of them
    /// is evicted until `release_blobs`; each counts as used now.
    pub fn lease_blobs(&self, build_id: &str, blobs: &[(String, u64)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_ms();
        for (digest, size) in blobs {
            exec(
                &tx,
                "INSERT INTO blob_leases (build_id, digest) VALUES (?1, ?2)",
                params![build_id, digest],
            )?;
            exec(
                &tx,
                "INSERT INTO cache_entries (kind, name, bytes, last_used_ms) VALUES ('blob', ?1, ?2, ?3)
                 ON CONFLICT (kind, name) DO UPDATE SET last_used_ms = ?3, bytes = ?2",
                params![digest, *size as i64, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn release_blobs(&self, build_id: &str) -> Result<()> {
        exec(
            &self.conn(),
            "DELETE FROM blob_leases WHERE build_id = ?1",
            [build_id],
        )?;
        Ok(())
    }

    /// At start: no build runs, so no blob is in use.
    pub fn clear_leases(&self) -> Result<()> {
        exec(&self.conn(), "DELETE FROM blob_leases", [])?;
        Ok(())
    }

    /// Records a cache entry found or made (used now).
    pub fn add_cache_entry(&self, kind: CacheKind, name: &str, bytes: u64) -> Result<()> {
        exec(
            &self.conn(),
            "INSERT INTO cache_entries (kind, name, bytes, last_used_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, name) DO UPDATE SET last_used_ms = ?4, bytes = ?3",
            params![kind.name(), name, bytes as i64, now_ms()],
        )?;
        Ok(())
    }

    /// Records that a blob found on disk is in the cache, unless it is known
    /// (an older server's, or one a crash left unrecorded).
    pub fn adopt_cache_entry(
        &self,
        kind: CacheKind,
        name: &str,
        bytes: u64,
        used_ms: i64,
    ) -> Result<()> {
        exec(
            &self.conn(),
            "INSERT OR IGNORE INTO cache_entries (kind, name, bytes, last_used_ms) VALUES (?1, ?2, ?3, ?4)",
            params![kind.name(), name, bytes as i64, used_ms],
        )?;
        Ok(())
    }

    pub fn touch_cache_entry(&self, kind: CacheKind, name: &str) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE cache_entries SET last_used_ms = ?3 WHERE kind = ?1 AND name = ?2",
            params![kind.name(), name, now_ms()],
        )?;
        Ok(())
    }

    /// Everything in the cache, least recently used first.
    pub fn cache_entries(&self) -> Result<Vec<CacheEntry>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, name, bytes, last_used_ms,
                        EXISTS (SELECT 1 FROM blob_leases l WHERE kind = 'blob' AND l.digest = name)
                 FROM cache_entries ORDER BY last_used_ms, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(CacheEntry {
                    kind: CacheKind::parse(&r.get::<_, String>(0)?),
                    name: r.get(1)?,
                    bytes: r.get(2)?,
                    last_used_ms: r.get(3)?,
                    in_use: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Evicts least recently used entries not in use until the cache holds
    /// at most `max_bytes`; `remove` deletes an entry's files. All of it in
    /// one write transaction, so no build takes a lease on a blob between
    /// the check and the removal. Answers what went.
    pub fn evict(
        &self,
        max_bytes: u64,
        remove: &mut dyn FnMut(&CacheEntry) -> std::io::Result<()>,
    ) -> Result<Vec<CacheEntry>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut total: i64 = row(
            &tx,
            "SELECT COALESCE(SUM(bytes), 0) FROM cache_entries",
            [],
            |r| r.get(0),
        )?;
        let mut gone = Vec::new();
        if total as u64 > max_bytes {
            let candidates: Vec<CacheEntry> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT kind, name, bytes, last_used_ms FROM cache_entries c
                     WHERE NOT (kind = 'blob' AND EXISTS (SELECT 1 FROM blob_leases l WHERE l.digest = c.name))
                     ORDER BY last_used_ms, name",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(CacheEntry {
                        kind: CacheKind::parse(&r.get::<_, String>(0)?),
                        name: r.get(1)?,
                        bytes: r.get(2)?,
                        last_used_ms: r.get(3)?,
                        in_use: false,
                    })
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for entry in candidates {
                if total as u64 <= max_bytes {
                    break;
                }
                match remove(&entry) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::Conflict(format!(
                            "evicting {} {}: {e}",
                            entry.kind.name(),
                            entry.name
                        )))
                    }
                }
                exec(
                    &tx,
                    "DELETE FROM cache_entries WHERE kind = ?1 AND name = ?2",
                    params![entry.kind.name(), entry.name],
                )?;
                total -= entry.bytes;
                gone.push(entry);
            }
        }
        tx.commit()?;
        Ok(gone)
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
            let (running, queued, storage_bytes) = row(
                c,
                &format!(
                    "SELECT
                   COALESCE(SUM(state IN ({})), 0),
                   COALESCE(SUM(state = 'QUEUED'), 0),
                   COALESCE(SUM(artifact_bytes), 0)
                 FROM builds WHERE tenant_id = ?1",
                    active.join(",")
                ),
                params![tenant_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
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

/// What a tenant uses of its quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// Builds past QUEUED and not ended.
    pub running: i64,
    pub queued: i64,
    /// Builds created today (UTC), deleted ones included.
    pub created_today: i64,
    /// What its artifacts take.
    pub storage_bytes: i64,
}

#[derive(Default, Debug)]
pub struct Stats {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub timed_out: i64,
    pub active: i64,
    pub average_ms: i64,
    pub artifact_bytes: i64,
}

fn tenant_row(r: &rusqlite::Row) -> rusqlite::Result<Tenant> {
    let tier: String = r.get(1)?;
    Ok(Tenant {
        id: r.get(0)?,
        tier: Tier::parse(&tier).unwrap_or(Tier::Free),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_build<'a>(id: &'a str, daily: u32) -> NewBuild<'a> {
        NewBuild {
            id,
            tenant_id: "acme",
            source_type: "docker_image",
            tier: Tier::Free,
            config_json: "{}",
            creds: None,
            max_interruptions: 1,
            daily_limit: daily,
            storage_limit: 1 << 30,
            log: "queued",
        }
    }

    #[test]
    fn quotas_transitions_and_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.create_tenant("acme", Tier::Free, "h1").unwrap();
        assert!(matches!(
            store.create_tenant("acme", Tier::Pro, "h2"),
            Err(StoreError::Conflict(_))
        ));
        assert!(
            matches!(store.key_owner("h1").unwrap(), Some(KeyOwner::Tenant(t)) if t.id == "acme")
        );
        assert!(store.key_owner("nope").unwrap().is_none());

        store.insert_build(&new_build("b1", 3)).unwrap();
        store.insert_build(&new_build("b2", 3)).unwrap();
        // A deleted build still counts against the day's quota.
        store.insert_build(&new_build("gone", 3)).unwrap();
        store.delete_build("gone").unwrap();
        assert_eq!(store.usage("acme").unwrap().created_today, 3);
        let fourth = store.insert_build(&new_build("b3", 3));
        assert!(matches!(fourth, Err(StoreError::Conflict(m)) if m.contains("daily builds quota")));

        // A cancel and a run cannot both move a build.
        assert!(store
            .transition("b1", &[State::Queued], State::Running)
            .unwrap());
        assert!(!store
            .transition("b1", &[State::Queued], State::Cancelled)
            .unwrap());
        assert!(store
            .transition("b2", &[State::Queued], State::Running)
            .unwrap());
        store
            .conn()
            .execute("UPDATE builds SET interruptions = 1 WHERE id = 'b2'", [])
            .unwrap();

        let (requeued, failed) = store.recover_interrupted().unwrap();
        assert_eq!(
            (requeued, failed),
            (vec!["b1".to_string()], vec!["b2".to_string()])
        );
        let b2 = store.build("acme", "b2").unwrap().unwrap();
        assert_eq!(b2.state, State::Failed);
        assert!(b2.error_message.unwrap().contains("interrupted 2 times"));
        let states: Vec<State> = store
            .transitions("b1")
            .unwrap()
            .into_iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(states, [State::Queued, State::Running, State::Queued]);
        assert!(store.build("other", "b1").unwrap().is_none());
    }
}
