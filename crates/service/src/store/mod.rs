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
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use rusqlite::{params, Connection};

mod bells;
mod builds;
mod cache_entries;
mod gauges;
mod keys;
mod logs;
mod observe;
mod outbox;
mod quota;
mod retention;
mod rows;
mod sql;
mod tenants;
mod uploads;

pub use keys::KeyInfo;
pub use observe::Transition;
pub use outbox::{Delivery, Webhook, EVENTS};
pub(crate) use rows::{build_row, tenant_row, BUILD_COLUMNS};
pub use rows::{
    BuildRow, CacheEntry, CacheKind, KeyOwner, LogLine, NewBuild, Retry, Stats, Tenant,
    TenantUsage, Usage,
};
pub use sql::now_ms;
pub(crate) use sql::{day_start_ms, exec, row};
pub use uploads::Upload;

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
    /// What hears of every transition (the metrics, the traces).
    observers: RwLock<Vec<observe::Observer>>,
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
}

/// Compiled statements kept per connection: more than the store has.
const STATEMENTS: usize = 64;

/// Idle readers kept open; more are opened when more reads run at once.
const IDLE_READERS: usize = 8;

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
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_expiry ON uploads(expires_ms);
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

/// The writing connection, its settings and schema in place. Another
/// process (a server beside `builderd tenant create`) may hold the write
/// lock for a moment; a busy answer the busy handler does not wait out
/// (SQLite gives one at once when a WAL snapshot went stale) is tried
/// again, for at most 10 s.
fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let once = || -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A build CreateBuild answered for must survive a crash of the machine.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        add_missing_columns(&conn)?;
        Ok(conn)
    };
    let mut tries = 0;
    loop {
        match once() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            done => return done,
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        owner_only(path).map_err(|e| {
            StoreError::Conflict(format!("{}: cannot make it private: {e}", path.display()))
        })?;
        let conn = open_writer(path)?;
        Ok(Store {
            outbox_wake: tokio::sync::Notify::new(),
            bells: bells::Bells::default(),
            observers: RwLock::new(Vec::new()),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use crate::tier::Tier;

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
