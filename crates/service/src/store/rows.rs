//! The rows the store answers with, and how they are read.

use crate::state::State;
use crate::tier::Tier;

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

pub(crate) const BUILD_COLUMNS: &str =
    "id, tenant_id, seq, config_json, creds, state, created_ms, started_ms, \
    finished_ms, updated_ms, attempts, interruptions, max_interruptions, progress_json, \
    error_category, error_message, artifact_json, cache_hit, artifact_bytes, expired_ms, \
    cpu_ms, peak_memory_bytes, disk_written_bytes";

pub(crate) fn build_row(r: &rusqlite::Row) -> rusqlite::Result<BuildRow> {
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

    pub(crate) fn parse(s: &str) -> CacheKind {
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

pub(crate) fn tenant_row(r: &rusqlite::Row) -> rusqlite::Result<Tenant> {
    let tier: String = r.get(1)?;
    Ok(Tenant {
        id: r.get(0)?,
        tier: Tier::parse(&tier).unwrap_or(Tier::Free),
    })
}
