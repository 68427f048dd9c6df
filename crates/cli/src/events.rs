//! What `builderd build` tells while it works: log lines for a person, or with
//! `--events json` one JSON object a line on stderr, for `builderd serve`,
//! which runs each build as a child process and follows it by these.
//!
//! The objects: `{"stage": "downloading"}`, `{"progress": {"step", "done",
//! "total", "files"}}`, `{"log": "…", "level": "info"|"warn"}`, `{"retry":
//! {"cause", "attempt", "attempts", "delay_ms", "message"}}`, `{"pulled":
//! {"bytes"}}` for each layer downloaded, `{"usage": {"cpu_ms",
//! "peak_memory_bytes", "disk_written_bytes"}}` at the end and, last on
//! failure, `{"error": "…", "category": "source"|"build"|"resource"}` (with
//! `"retry_cause": "TEMPORARY_RESOURCE_ERROR"` when the machine ran short for
//! a moment: a full disk, no memory). With `--hold-after-resolve`,
//! `{"resolved": {"manifest_digest", "config_digest", "config_size", "layers":
//! [{"digest", "size"}]}}` once the image is resolved.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

static JSON: AtomicBool = AtomicBool::new(false);

/// Progress lines at most this often: the service stores each one.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

static LAST_PROGRESS: Mutex<Option<Instant>> = Mutex::new(None);

pub fn enable_json() {
    JSON.store(true, Ordering::Relaxed);
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The longest message told (an image's text can be part of one: a media
/// type, a file name); the rest is cut, so no event line grows without bound.
const MAX_MESSAGE: usize = 4096;

/// `message`, at most `MAX_MESSAGE` bytes of it (cut at a character's edge).
fn bounded(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_MESSAGE {
        return message.into();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes not shown)",
        &message[..end],
        message.len() - end
    )
    .into()
}

fn emit(value: serde_json::Value) {
    // One write a line, so lines from threads never interleave.
    let line = format!("{value}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The build entered a stage: preparing, downloading, building, optimizing,
/// packaging.
pub fn stage(name: &str) {
    if json() {
        emit(json!({ "stage": name }));
    }
}

/// How far the current step is; sent at most every 250 ms unless `force`.
pub fn progress(step: &str, done: u64, total: u64, files: u64, force: bool) {
    if !json() {
        return;
    }
    {
        let mut last = LAST_PROGRESS.lock().unwrap();
        if !force && last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    emit(json!({ "progress": { "step": step, "done": done, "total": total, "files": files } }));
}

/// What the image resolved to (for the service's artifact cache, which
/// answers on stdin).
pub fn resolved(image: &builderd_oci::Image) {
    if json() {
        let layers: Vec<_> = image
            .layers
            .iter()
            .map(|l| json!({ "digest": l.digest.as_str(), "size": l.size }))
            .collect();
        emit(json!({ "resolved": {
            "manifest_digest": image.manifest_digest.as_str(),
            "config_digest": image.config_digest.as_str(),
            "config_size": image.config_size,
            "layers": layers,
        } }));
    }
}

pub fn info(message: &str) {
    if json() {
        emit(json!({ "log": bounded(message), "level": "info" }));
    } else {
        eprintln!("builderd: {}", bounded(message));
    }
}

pub fn warn(message: &str) {
    if json() {
        emit(json!({ "log": bounded(message), "level": "warn" }));
    } else {
        eprintln!("builderd: warning: {}", bounded(message));
    }
}

/// A layer of `bytes` was downloaded into the blob cache (for the
/// service's count of bytes pulled).
pub fn pulled(bytes: u64) {
    if json() {
        emit(json!({ "pulled": { "bytes": bytes } }));
    }
}

/// What this build process and the processes it waited for used, told
/// once at its end (before any error).
pub fn usage() {
    if !json() {
        return;
    }
    let (self_cpu, self_rss) = rusage(libc::RUSAGE_SELF);
    let (child_cpu, child_rss) = rusage(libc::RUSAGE_CHILDREN);
    emit(json!({ "usage": {
        "cpu_ms": self_cpu + child_cpu,
        "peak_memory_bytes": self_rss.max(child_rss),
        "disk_written_bytes": written_bytes(),
    } }));
}

/// CPU milliseconds (user and system) and peak resident bytes.
fn rusage(who: libc::c_int) -> (u64, u64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return (0, 0);
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    // ru_maxrss is in KiB on Linux.
    (ms(u.ru_utime) + ms(u.ru_stime), u.ru_maxrss as u64 * 1024)
}

/// Bytes this process sent to storage (`write_bytes` of /proc/self/io).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A registry request failed and is about to be tried again.
pub fn retry(n: &builderd_oci::RetryNotice) {
    if json() {
        emit(json!({ "retry": {
            "cause": n.cause.name(),
            "attempt": n.attempt,
            "attempts": n.attempts,
            "delay_ms": n.delay.as_millis() as u64,
            "message": bounded(&n.message),
        } }));
    } else {
        eprintln!("builderd: warning: {n}");
    }
}

/// The build failed; `temporary` when trying again later may pass.
pub fn error(message: &str, category: Category, temporary: bool) {
    if json() {
        let mut e = json!({ "error": bounded(message), "category": category.name() });
        if temporary {
            e["retry_cause"] = json!(builderd_oci::RetryCause::TemporaryResource.name());
        }
        emit(e);
    } else {
        eprintln!("builderd: error: {}", bounded(message));
    }
}

/// Whose fault a failure is, so the service can say what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// The image could not be had: registry, network, credentials, digests.
    Source,
    /// A limit or the machine: the size limit, a full disk.
    Resource,
    /// Anything else: the image could not be made into a rootfs.
    Build,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Source => "source",
            Category::Resource => "resource",
            Category::Build => "build",
        }
    }

    /// From the error's causes: a registry or blob error anywhere in the
    /// chain (also inside the I/O error a layer read turns it into) is the
    /// source's; no space or quota on the disk, or the size limit, is a resource.
    pub fn of(e: &anyhow::Error) -> Category {
        for cause in e.chain() {
            if cause.is::<builderd_oci::Error>() || cause.is::<SourceError>() {
                return Category::Source;
            }
            if cause.is::<SizeLimitExceeded>() {
                return Category::Resource;
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                    return Category::Resource;
                }
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<builderd_oci::Error>())
                {
                    return Category::Source;
                }
            }
        }
        Category::Build
    }
}

/// The machine ran short for a moment: no space or quota left on the disk,
/// no memory. (The size limit is a resource too, but not a passing one.)
pub fn is_temporary(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|code| [libc::ENOSPC, libc::EDQUOT, libc::ENOMEM].contains(&code))
    })
}

/// A problem with the SOURCE argument itself (its syntax, its platform).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// The image would be larger than a limit: the build's size limit, or what
/// is left of the tenant's storage.
#[derive(Debug, thiserror::Error)]
pub struct SizeLimitExceeded {
    /// The image's size, when it was finished; None when its content went
    /// past the limit while it was written (and the writing stopped there).
    pub size: Option<u64>,
    pub limit: u64,
    pub which: Limit,
}

/// Which limit an image went past.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The build's size limit, under this name (`--size-limit` on the
    /// command line, `size_limit_bytes` in a service's build config).
    Size(String),
    /// What is left of the tenant's storage quota.
    Storage,
}

impl std::fmt::Display for SizeLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::units::human;
        match self.size {
            Some(size) => write!(f, "the image is {size} bytes ({})", human(size))?,
            None => write!(f, "the image's content grew past the limit")?,
        }
        let limit = self.limit;
        match &self.which {
            Limit::Size(name) => write!(
                f,
                ", over the size limit of {limit} bytes ({}); raise {name} or make the image smaller",
                human(limit)
            ),
            Limit::Storage => write!(
                f,
                ", over the {limit} bytes ({}) left of the tenant's storage quota; delete builds to free space",
                human(limit)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_the_cause() {
        let digest = anyhow::Error::new(builderd_oci::Error::Digest {
            digest: "sha256:00".into(),
            reason: "mismatch".into(),
        })
        .context("reading layer 1");
        assert_eq!(Category::of(&digest), Category::Source);

        let in_io = anyhow::Error::new(std::io::Error::other(builderd_oci::Error::Auth(
            "401".into(),
        )));
        assert_eq!(Category::of(&in_io), Category::Source);

        // A blob found not to match its digest while it is read.
        let blob = b"layer";
        let mut checked = builderd_oci::VerifyingReader::new(
            &b"layeR"[..],
            builderd_oci::Digest::of(blob),
            blob.len() as u64,
        );
        let mismatch = std::io::copy(&mut checked, &mut std::io::sink()).unwrap_err();
        assert_eq!(
            Category::of(&anyhow::Error::new(mismatch)),
            Category::Source
        );

        let full = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("writing the image");
        assert_eq!(Category::of(&full), Category::Resource);

        assert!(is_temporary(&full));
        let big = anyhow::Error::new(SizeLimitExceeded {
            size: Some(2),
            limit: 1,
            which: Limit::Size("--size-limit".into()),
        });
        assert_eq!(Category::of(&big), Category::Resource);
        assert!(!is_temporary(&big));

        assert_eq!(
            Category::of(&anyhow::anyhow!("no systemd in the image")),
            Category::Build
        );
    }
}
