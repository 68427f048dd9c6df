//! Runs one build: a `builderd build --events json` child process in its own
//! process group and work directory, followed by its events (stages become
//! state transitions, progress and log lines are stored). A child keeps a
//! crash or a hostile image away from the server, and killing its group stops
//! all of its work at once: that is how cancel, timeout and shutdown stop it.
//!
//! All the build's network work happens in the child, the image's
//! resolution too: the child resolves the image with the build's own
//! credentials, tells what it found (`{"resolved": …}`) and waits. If the
//! artifact cache has what that manifest makes, the server takes it and
//! kills the child; otherwise it tells the child to go on. So nothing a build
//! starts (a stalled registry, a long retry wait) outlives its process group.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use builderd_oci::{RetryCause, RetryPolicy};

use crate::cache::Cache;
use crate::job::Job;
use crate::state::State;
use crate::store::{BuildRow, Retry, Store, Usage};

/// Why the server stops a run before it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// CancelBuild.
    Cancel,
    /// Server shutdown: the build goes back to the queue.
    Requeue,
}

pub struct Runner {
    /// The `builderd` binary that runs builds.
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    pub insecure_registries: Vec<String>,
    /// Builds may reach loopback, private and link-local registries.
    pub allow_private_registries: bool,
    /// The retry policy of builds whose config has none.
    pub retry_defaults: RetryPolicy,
    /// The artifact cache, and the blob cache the builds share.
    pub cache: Arc<Cache>,
    /// Where each build's cgroup goes.
    pub confinement: Arc<crate::confine::Confinement>,
    /// The operator's bound on any build's memory, below the tier's if lower.
    pub max_build_memory: Option<u64>,
}

/// The longest line a build process may write on stderr: longer ones are
/// cut (the rest of the line is dropped), so a build cannot make the server
/// hold an unbounded line.
const MAX_LINE: usize = 64 << 10;

/// What the build process found when it resolved the image.
#[derive(serde::Deserialize)]
struct Resolved {
    manifest_digest: String,
    config_digest: String,
    config_size: u64,
    layers: Vec<ResolvedLayer>,
}

#[derive(serde::Deserialize)]
struct ResolvedLayer {
    digest: String,
    size: u64,
}

/// What a run made, when it made something.
pub enum Outcome {
    /// The build process wrote the artifact into the work directory.
    Built,
    /// The cache had it: linked in, with the cached metadata.
    Cached { key: String, meta: Value },
}

/// How a run ended, for the scheduler's log.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    Requeued,
    /// Back in the queue after a temporary failure, to run again later.
    Retrying,
}

impl Runner {
    pub fn work_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("work").join(id)
    }

    pub fn artifact_dir(&self, tenant: &str, id: &str) -> PathBuf {
        self.data_dir.join("artifacts").join(tenant).join(id)
    }

    /// The build process's arguments; `storage_left` is what the tenant's
    /// storage quota has room for (the image may not grow past it).
    fn args(&self, job: &Job, work: &Path, storage_left: Option<u64>) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "build".into(),
            "-o".into(),
            work.join(ARTIFACT).display().to_string(),
            "--events".into(),
            "json".into(),
            "--no-docker-config".into(),
            "--cache-dir".into(),
            self.data_dir.join("blobs").display().to_string(),
            "--init".into(),
            job.init.into(),
            "--hold-after-resolve".into(),
        ];
        if !self.allow_private_registries {
            a.push("--public-only".into());
        }
        let mut opt = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                a.push(flag.into());
                a.push(v);
            }
        };
        let json = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|v| serde_json::to_string(v).expect("strings serialise"))
        };
        opt("--platform", job.platform.clone());
        // The registry requests' share of the policy; a temporary resource
        // shortage is retried here, by running the build again.
        let request_causes: Vec<&str> = job
            .retry
            .retry_on
            .iter()
            .filter(|c| **c != RetryCause::TemporaryResource)
            .map(|c| c.name())
            .collect();
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let retries = if request_causes.is_empty() {
            0
        } else {
            job.retry.max_retries
        };
        opt("--retries", Some(retries.to_string()));
        opt(
            "--retry-backoff",
            Some(job.retry.backoff.name().to_string()),
        );
        opt("--retry-base-delay", Some(ms(job.retry.base_delay)));
        opt("--retry-max-delay", Some(ms(job.retry.max_delay)));
        if !request_causes.is_empty() {
            opt("--retry-on", Some(request_causes.join(",")));
        }
        opt(
            "--init-script",
            job.init_script
                .as_ref()
                .map(|_| work.join("init-script").display().to_string()),
        );
        opt("--compression", job.compression.map(str::to_string));
        opt("--size-limit", job.size_limit.map(|n| n.to_string()));
        opt(
            "--size-limit-name",
            Some("config.target.microvm_rootfs.size_limit_bytes".into()),
        );
        opt("--storage-left", storage_left.map(|n| n.to_string()));
        opt("--entrypoint", json(&job.entrypoint));
        opt("--cmd", json(&job.cmd));
        opt("--workdir", job.working_dir.clone());
        opt("--user", job.user.clone());
        opt("--hostname", job.hostname.clone());
        for (k, v) in &job.env {
            opt("--env", Some(format!("{k}={v}")));
        }
        for r in &self.insecure_registries {
            opt("--insecure-registry", Some(r.clone()));
        }
        // The reference is the tenant's: after `--`, it is never an option.
        a.push("--".into());
        a.push(job.image.clone());
        a
    }

    /// Runs the build to its end. The build is RUNNING when this is called;
    /// this moves it on to its final state (or back to QUEUED on Requeue).
    pub async fn run(
        &self,
        store: Arc<Store>,
        build: &BuildRow,
        job: Job,
        timeout: Duration,
        mut stop: watch::Receiver<Option<Stop>>,
    ) -> Ended {
        let id = build.id.as_str();
        let work = self.work_dir(id);
        let deadline = tokio::time::Instant::now() + timeout;
        let result = self
            .attempt(&store, build, &job, &work, deadline, &mut stop)
            .await;
        let ended = self.settle(&store, build, &job, result, timeout);
        let _ = store.release_blobs(id);
        let _ = std::fs::remove_dir_all(&work);
        let (cache, store) = (self.cache.clone(), store.clone());
        let evicted = tokio::task::spawn_blocking(move || cache.evict(&store, None)).await;
        if let Ok(Err(e)) = evicted {
            tracing::error!(error = %e, "cache eviction");
        }
        ended
    }

    /// Runs the build process, which resolves the image with the build's
    /// own credentials (so a tenant only ever gets a cached artifact of an
    /// image it can pull) and then, unless the artifact cache has what it
    /// would make, builds it.
    async fn attempt(
        &self,
        store: &Arc<Store>,
        build: &BuildRow,
        job: &Job,
        work: &Path,
        deadline: tokio::time::Instant,
        stop: &mut watch::Receiver<Option<Stop>>,
    ) -> Result<Outcome, RunError> {
        let _ = store.transition(&build.id, &State::ACTIVE, State::Preparing);
        self.run_child(store, build, job, work, deadline, stop)
            .await
    }

    /// The image is resolved: its blobs are leased (no eviction while the
    /// build may read them), and the cached artifact of that manifest, if
    /// any, is linked into the build's artifact directory.
    async fn on_resolved(
        &self,
        store: &Store,
        build: &BuildRow,
        job: &Job,
        resolved: &Resolved,
    ) -> Result<Option<Outcome>, RunError> {
        let id = build.id.as_str();
        let mut blobs = vec![(resolved.config_digest.clone(), resolved.config_size)];
        blobs.extend(resolved.layers.iter().map(|l| (l.digest.clone(), l.size)));
        let _ = store.lease_blobs(id, &blobs);
        let manifest = builderd_oci::Digest::parse(&resolved.manifest_digest).map_err(|e| {
            RunError::Failed {
                category: "build",
                message: format!("the build process resolved a bad digest: {e}"),
                temporary: false,
            }
        })?;
        let key = self.cache.key(&manifest, job);
        let dest = self.artifact_dir(&build.tenant_id, id);
        let cache = self.cache.clone();
        let k = key.clone();
        let hit = tokio::task::spawn_blocking(move || cache.link_into(&k, &dest))
            .await
            .map_err(|e| RunError::resource(format!("the artifact cache: {e}")))?
            .map_err(|e| RunError::resource(format!("the artifact cache: {e}")))?;
        store.metrics.cache_lookup(hit.is_some());
        Ok(hit.map(|meta| Outcome::Cached { key, meta }))
    }

    /// Records how the run ended.
    fn settle(
        &self,
        store: &Store,
        build: &BuildRow,
        job: &Job,
        result: Result<Outcome, RunError>,
        timeout: Duration,
    ) -> Ended {
        let id = build.id.as_str();
        let (to, category, message, ended) = match result {
            Ok(Outcome::Built) => return self.finish(store, build, job),
            Ok(Outcome::Cached { key, meta }) => {
                return self.finish_cached(store, build, job, &key, meta)
            }
            Err(RunError::Stopped(Stop::Cancel)) => (
                State::Cancelled,
                None,
                "cancelled".to_string(),
                Ended::Cancelled,
            ),
            Err(RunError::Stopped(Stop::Requeue)) => {
                let _ = store.transition(id, &State::ACTIVE, State::Queued);
                log(store, id, "info", "server shutting down: back to the queue");
                return Ended::Requeued;
            }
            Err(RunError::TimedOut) => (
                State::Timeout,
                Some("timeout"),
                format!(
                    "the build ran longer than its time limit ({}) and was stopped",
                    match timeout.as_secs() {
                        s if s % 60 == 0 => format!("{} minutes", s / 60),
                        s => format!("{s} seconds"),
                    }
                ),
                Ended::TimedOut,
            ),
            Err(RunError::Failed {
                category,
                message,
                temporary,
            }) => {
                if temporary {
                    if let Some(ended) = retry_build(store, build, job, &message) {
                        return ended;
                    }
                }
                (State::Failed, Some(category), message, Ended::Failed)
            }
        };
        if let Some(category) = category {
            let _ = store.set_error(id, category, &message);
        }
        log(store, id, "error", &message);
        let _ = store.transition(id, &State::ACTIVE, to);
        ended
    }

    async fn run_child(
        &self,
        store: &Store,
        build: &BuildRow,
        job: &Job,
        work: &Path,
        deadline: tokio::time::Instant,
        stop: &mut watch::Receiver<Option<Stop>>,
    ) -> Result<Outcome, RunError> {
        let id = build.id.as_str();
        let _ = std::fs::remove_dir_all(work);
        std::fs::create_dir_all(work)
            .map_err(|e| RunError::resource(format!("work directory: {e}")))?;
        if let Some(script) = &job.init_script {
            std::fs::write(work.join("init-script"), script)
                .map_err(|e| RunError::resource(format!("work directory: {e}")))?;
        }
        let tenant = store.tenant(&build.tenant_id).ok().flatten();
        let limits = tenant
            .as_ref()
            .map_or(crate::tier::Tier::Free, |t| t.tier)
            .limits();
        let storage_left = tenant.as_ref().and_then(|t| {
            let used = store.usage(&t.id).ok()?.storage_bytes.max(0) as u64;
            Some(limits.storage_bytes.saturating_sub(used))
        });
        let bounds = crate::confine::Bounds {
            memory_bytes: self
                .max_build_memory
                .map_or(limits.build_memory_bytes, |cap| {
                    cap.min(limits.build_memory_bytes)
                }),
            processes: limits.build_processes,
        };
        let cell = Arc::new(
            self.confinement
                .cell(id, bounds)
                .map_err(|e| RunError::resource(format!("the build's cgroup: {e}")))?,
        );
        let mut cmd = Command::new(&self.exe);
        cmd.args(self.args(job, work, storage_left))
            .current_dir(work)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("BUILDERD_CREDS")
            .process_group(0)
            .kill_on_drop(true);
        if let Some(creds) = &build.creds {
            cmd.env("BUILDERD_CREDS", creds);
        }
        let inside = cell.clone();
        // SAFETY: prctl, setpriority and what `Cell::enter` calls (open,
        // write, close, setrlimit) are async-signal-safe; nothing else runs
        // in the fork.
        unsafe {
            cmd.pre_exec(move || {
                inside.enter()?;
                // A build must not outlive a server killed with -9: the
                // restarted server runs it again from the start.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Builds are batch work: the API must keep answering while
                // they use every core.
                if libc::setpriority(libc::PRIO_PROCESS, 0, BUILD_NICENESS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| RunError::Failed {
            category: "build",
            message: format!("cannot start {}: {e}", self.exe.display()),
            temporary: false,
        })?;
        let pgid = child.id().map(|p| p as i32);
        let kill = || {
            if let Some(pgid) = pgid {
                // SAFETY: kill(2) on the child's own process group.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        };
        let mut stdin = child.stdin.take();
        let mut lines = FramedRead::new(
            child.stderr.take().expect("stderr is piped"),
            LinesCodec::new_with_max_length(MAX_LINE),
        );
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        let mut follow = Follow::new(id);
        let mut stderr_open = true;
        let status = loop {
            tokio::select! {
                line = lines.next(), if stderr_open => match line {
                    Some(Ok(line)) => {
                        let Some(resolved) = follow.event(store, &line) else { continue };
                        match self.on_resolved(store, build, job, &resolved).await {
                            Ok(Some(cached)) => {
                                kill();
                                let _ = child.wait().await;
                                return Ok(cached);
                            }
                            Ok(None) => {
                                let go = match stdin.take() {
                                    Some(mut s) => s.write_all(b"build\n").await.is_ok(),
                                    None => false,
                                };
                                if !go {
                                    tracing::warn!(build_id = %id, "the build process stopped listening");
                                }
                            }
                            Err(e) => {
                                kill();
                                let _ = child.wait().await;
                                return Err(e);
                            }
                        }
                    }
                    Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                        let _ = store.log(id, "warn", &format!("the build process wrote a line longer than {MAX_LINE} bytes: dropped"), "builderd");
                    }
                    Some(Err(LinesCodecError::Io(_))) | None => stderr_open = false,
                },
                status = child.wait(), if !stderr_open => break status,
                _ = &mut deadline => {
                    record_usage_before_kill(store, id, pgid);
                    kill();
                    let _ = child.wait().await;
                    return Err(RunError::TimedOut);
                }
                why = stopped(stop) => {
                    record_usage_before_kill(store, id, pgid);
                    kill();
                    let _ = child.wait().await;
                    return Err(RunError::Stopped(why));
                }
            }
        };
        // The child may have left a process of its own behind.
        kill();
        match status {
            Ok(s) if s.success() => Ok(Outcome::Built),
            Ok(_) if cell.oom_killed() => Err(RunError::Failed {
                category: "resource",
                message: format!(
                    "the build used more memory than its limit of {} bytes and was stopped",
                    cell.memory_limit()
                ),
                temporary: false,
            }),
            Ok(s) => Err(follow.failure.take().unwrap_or_else(|| RunError::Failed {
                category: "build",
                message: format!("the build process ended with {s} without saying why"),
                temporary: false,
            })),
            Err(e) => Err(RunError::Failed {
                category: "build",
                message: format!("waiting for the build process: {e}"),
                temporary: false,
            }),
        }
    }
}

/// A build process about to be killed cannot tell what it used: read it
/// from /proc instead (CPU time, peak resident memory, bytes written).
fn record_usage_before_kill(store: &Store, id: &str, pid: Option<i32>) {
    let Some(pid) = pid else { return };
    let proc = |file: &str| std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok();
    // utime and stime: fields 14 and 15, counted after the ")" that ends the
    // command name (which may hold spaces).
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    let cpu_ms = proc("stat")
        .and_then(|s| {
            let fields: Vec<i64> = s
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse().ok())
                .collect();
            Some(fields.iter().sum::<i64>() * 1000 / ticks)
        })
        .unwrap_or(0);
    let field = |file: &str, name: &str| {
        proc(file)
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
            })
            .unwrap_or(0)
    };
    let _ = store.add_usage(
        id,
        &Usage {
            cpu_ms,
            // In kB.
            peak_memory_bytes: field("status", "VmHWM:") * 1024,
            disk_written_bytes: field("io", "write_bytes:"),
        },
    );
}

/// The scheduling priority of build processes (as `nice -n 10`).
const BUILD_NICENESS: libc::c_int = 10;

/// The image file's name in the work and artifact directories.
pub const ARTIFACT: &str = "rootfs.ext4";

pub enum RunError {
    Stopped(Stop),
    TimedOut,
    Failed {
        category: &'static str,
        message: String,
        /// The machine ran short for a moment: trying again later may pass.
        temporary: bool,
    },
}

impl RunError {
    pub fn resource(message: String) -> RunError {
        RunError::Failed {
            category: "resource",
            message,
            temporary: false,
        }
    }
}

/// A build that failed for a passing shortage goes back to the queue, to
/// run again after the policy's wait, if its policy retries such failures
/// and has retries left. Answers None when it does not.
fn retry_build(store: &Store, build: &BuildRow, job: &Job, message: &str) -> Option<Ended> {
    let id = build.id.as_str();
    let cause = RetryCause::TemporaryResource;
    if !job.retry.retries(cause) {
        return None;
    }
    let done = store.build_retries(id).ok()?;
    if done >= job.retry.max_retries {
        log(
            store,
            id,
            "warn",
            &format!(
                "{} (no retries left: {done} of {})",
                cause.name(),
                job.retry.max_retries
            ),
        );
        return None;
    }
    let attempt = done + 1;
    let delay = job.retry.delay(attempt, None);
    let notice = builderd_oci::RetryNotice {
        cause,
        attempt,
        attempts: job.retry.max_retries + 1,
        delay,
        message: message.to_string(),
    };
    record_retry(store, id, &notice, "build");
    let not_before = crate::store::now_ms() + delay.as_millis() as i64;
    store
        .retry_later(id, not_before)
        .ok()?
        .then_some(Ended::Retrying)
}

/// Keeps a retry in the build's status and logs.
fn record_retry(store: &Store, id: &str, n: &builderd_oci::RetryNotice, scope: &str) {
    store.metrics.retry(n.cause.name(), scope);
    let _ = store.add_retry(
        id,
        &Retry {
            at_ms: crate::store::now_ms(),
            attempt: i64::from(n.attempt),
            cause: n.cause.name().to_string(),
            message: n.message.clone(),
            delay_ms: n.delay.as_millis() as i64,
            scope: scope.to_string(),
        },
    );
    log(store, id, "warn", &n.to_string());
}

pub fn log(store: &Store, id: &str, level: &str, message: &str) {
    let _ = store.log(id, level, message, "builderd");
}

/// What the child has said so far.
struct Follow {
    id: String,
    state: State,
    failure: Option<RunError>,
}

impl Follow {
    fn new(id: &str) -> Follow {
        Follow {
            id: id.to_string(),
            // The server resolved the image first.
            state: State::Preparing,
            failure: None,
        }
    }

    /// Takes in one line; answers what the image resolved to when the line
    /// says so (the build process then waits for the server's word).
    fn event(&mut self, store: &Store, line: &str) -> Option<Resolved> {
        let id = self.id.as_str();
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            // Not an event: a panic message or a tool's own output.
            let _ = store.log(id, "info", line, "build");
            return None;
        };
        if let Some(r) = v.get("resolved") {
            return match serde_json::from_value(r.clone()) {
                Ok(resolved) => Some(resolved),
                Err(e) => {
                    let _ = store.log(
                        id,
                        "warn",
                        &format!("an unreadable resolved event: {e}"),
                        "builderd",
                    );
                    None
                }
            };
        }
        if let Some(stage) = v["stage"].as_str() {
            if let Some(to) = State::from_stage(stage).filter(|to| *to != self.state) {
                if store.transition(id, &State::ACTIVE, to).unwrap_or(false) {
                    self.state = to;
                    let (start, _) = to.percent_range();
                    let _ = store.set_progress(
                        id,
                        &serde_json::json!({ "stage": stage, "percent": start }).to_string(),
                    );
                }
            }
        } else if let Some(p) = v.get("progress") {
            let done = p["done"].as_u64().unwrap_or(0);
            let total = p["total"].as_u64().unwrap_or(0);
            let (start, end) = self.state.percent_range();
            let percent = if total > 0 {
                start + ((end - start) as f64 * done.min(total) as f64 / total as f64) as i32
            } else {
                start
            };
            let progress = serde_json::json!({
                "stage": self.state.name().to_ascii_lowercase(),
                "percent": percent,
                "step": p["step"],
                "done": done,
                "total": total,
                "files": p["files"],
            });
            let _ = store.set_progress(id, &progress.to_string());
        } else if let Some(message) = v["log"].as_str() {
            let level = v["level"].as_str().unwrap_or("info");
            let _ = store.log(id, level, message, "build");
        } else if let Some(u) = v.get("usage") {
            let n = |k: &str| u[k].as_i64().unwrap_or(0);
            let _ = store.add_usage(
                id,
                &Usage {
                    cpu_ms: n("cpu_ms"),
                    peak_memory_bytes: n("peak_memory_bytes"),
                    disk_written_bytes: n("disk_written_bytes"),
                },
            );
        } else if let Some(bytes) = v["pulled"]["bytes"].as_u64() {
            store.metrics.pulled(bytes);
        } else if let Some(r) = v.get("retry") {
            if let Some(notice) = retry_notice(r) {
                record_retry(store, id, &notice, "request");
            }
        } else if let Some(message) = v["error"].as_str() {
            let category = match v["category"].as_str() {
                Some("source") => "source",
                Some("resource") => "resource",
                _ => "build",
            };
            self.failure = Some(RunError::Failed {
                category,
                message: message.to_string(),
                temporary: v["retry_cause"].as_str() == Some(RetryCause::TemporaryResource.name()),
            });
        }
        None
    }
}

/// Waits until the server asks the run to stop, and says why (a server
/// going away requeues).
async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if stop.changed().await.is_err() {
            return Stop::Requeue;
        }
        if let Some(why) = *stop.borrow() {
            return why;
        }
    }
}

/// A `{"retry": …}` event of the child's.
fn retry_notice(r: &Value) -> Option<builderd_oci::RetryNotice> {
    Some(builderd_oci::RetryNotice {
        cause: RetryCause::parse(r["cause"].as_str()?)?,
        attempt: u32::try_from(r["attempt"].as_u64()?).ok()?,
        attempts: u32::try_from(r["attempts"].as_u64()?).ok()?,
        delay: Duration::from_millis(r["delay_ms"].as_u64()?),
        message: r["message"].as_str()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_options_become_build_arguments() {
        let data = tempfile::tempdir().unwrap();
        let runner = Runner {
            confinement: Arc::new(crate::confine::Confinement::Rlimits),
            max_build_memory: None,
            exe: "builderd".into(),
            data_dir: "/data".into(),
            insecure_registries: vec!["reg:5000".into()],
            allow_private_registries: false,
            retry_defaults: crate::job::default_retry_policy(),
            cache: Arc::new(Cache::open(data.path(), None, 0).unwrap()),
        };
        let job = Job {
            image: "alpine".into(),
            init: "custom",
            init_script: Some("#!/bin/sh\n".into()),
            compression: Some("gzip"),
            size_limit: Some(10),
            cmd: Some(vec!["sh".into(), "-c".into(), "echo a b".into()]),
            env: [("A".to_string(), "1 2".to_string())].into(),
            retry: crate::job::default_retry_policy(),
            ..Job::default()
        };
        let a = runner.args(&job, Path::new("/w"), Some(1000));
        let joined = a.join(" ");
        assert!(joined.starts_with("build -o /w/rootfs.ext4 --events json --no-docker-config --cache-dir /data/blobs --init custom --hold-after-resolve --public-only"), "{joined}");
        // The tenant's reference comes last, after `--`.
        assert!(joined.ends_with(" -- alpine"), "{joined}");
        for pair in [
            ["--init-script", "/w/init-script"],
            ["--compression", "gzip"],
            ["--size-limit", "10"],
            ["--storage-left", "1000"],
            ["--cmd", r#"["sh","-c","echo a b"]"#],
            ["--env", "A=1 2"],
            ["--insecure-registry", "reg:5000"],
            ["--retries", "3"],
            ["--retry-base-delay", "1000ms"],
            ["--retry-on", "NETWORK_ERROR,REGISTRY_RATE_LIMIT"],
        ] {
            assert!(a.windows(2).any(|w| w == pair), "{pair:?} in {a:?}");
        }
    }
}
