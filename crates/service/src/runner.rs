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

use builderd_build::{
    ArchiveOptions, BlobCacheChoice, BootOptions, BuildRequest, BuildSecret, CopyFormat, Event,
    GitOptions, Init, LayerOptions, PolicyOptions, ProjectOptions, RegistryOptions, Resolved,
    StepLimits, StepNetwork, Steps,
};
use builderd_oci::{RetryCause, RetryPolicy};

use crate::artifact::Artifacts;
use crate::job::Job;
use crate::paths::ARTIFACT;
use crate::state::State;
use crate::store::{BuildRow, Retry, Store, Usage};
use crate::tier::Limits;

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
    /// The data directory's places, and the artifact cache.
    pub artifacts: Artifacts,
    pub insecure_registries: Vec<String>,
    /// The operator's hardening policy file, for every build that hardens.
    pub hardening_policy: Option<PathBuf>,
    /// Builds may reach loopback, private and link-local registries.
    pub allow_private_registries: bool,
    /// The retry policy of builds whose config has none.
    pub retry_defaults: RetryPolicy,
    /// Where each build's cgroup goes.
    pub confinement: Arc<crate::confine::Confinement>,
    /// The operator's bound on any build's memory, below the tier's if lower.
    pub max_build_memory: Option<u64>,
    /// What builds' steps reach, for every tier; None: by the tier.
    pub steps_network: Option<StepNetwork>,
    /// Counts cache lookups, retries and bytes pulled.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What Git sources may reach.
    pub git: GitPolicy,
    /// Archive URLs may name loopback and private addresses (and plain
    /// http on loopback).
    pub allow_private_archive_urls: bool,
    /// Opens the builds' sealed secrets.
    pub sealer: Arc<crate::sealed::Sealer>,
}

/// The operator's rules for Git sources.
#[derive(Clone, Debug, Default)]
pub struct GitPolicy {
    /// Loopback, private and link-local addresses may be reached.
    pub allow_private: bool,
    /// Hosts reached over plain http or git://.
    pub insecure_hosts: Vec<String>,
    /// The ssh servers' host keys; without it, no ssh server is trusted.
    pub known_hosts: Option<PathBuf>,
    /// The operator's base-image table for detected stacks.
    pub base_images: Option<PathBuf>,
}

/// The longest line a build process may write on stderr: longer ones are
/// cut (the rest of the line is dropped), so a build cannot make the server
/// hold an unbounded line.
const MAX_LINE: usize = 64 << 10;

/// What a build may use: its tier's limits, and the room its tenant's
/// storage quota has left (the image may not grow past it).
struct Room<'a> {
    storage_left: Option<u64>,
    limits: &'a Limits,
}

/// An archive build's upload, linked into its work directory (so that it
/// stays whole while the build reads it, whatever the upload's expiry).
const ARCHIVE: &str = "source.archive";

/// What a run made, when it made something.
pub enum Outcome {
    /// The build process wrote the artifact into the work directory; the
    /// artifact cache's key of what it resolved, when it did.
    Built { key: Option<String> },
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
    /// Links the tenant's upload `id` into `work` as the build's archive.
    fn link_upload(&self, tenant: &str, id: &str, work: &Path) -> Result<(), RunError> {
        let upload = self.artifacts.dirs.uploads().join(tenant).join(id);
        let to = work.join(ARCHIVE);
        match std::fs::hard_link(&upload, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RunError::Failed {
                category: "source",
                message: format!(
                    "the upload {id} is gone: it expired or was deleted before the build ran"
                ),
                retry: None,
            }),
            Err(e) => Err(RunError::resource(format!("linking the upload {id}: {e}"))),
        }
    }

    pub fn artifact_dir(&self, tenant: &str, id: &str) -> PathBuf {
        self.artifacts.dirs.artifacts(tenant, id)
    }

    /// The build process's request, within what `room` allows.
    fn request(
        &self,
        job: &Job,
        work: &Path,
        room: &Room<'_>,
        steps: Steps,
        build_id: &str,
        tenant: &str,
    ) -> BuildRequest {
        let (storage_left, limits) = (room.storage_left, room.limits);
        // The registry requests' share of the policy; a temporary resource
        // shortage is retried here, by running the build again.
        let request_causes: Vec<RetryCause> = job
            .retry
            .retry_on
            .iter()
            .copied()
            .filter(|c| *c != RetryCause::TemporaryResource)
            .collect();
        let retry = RetryPolicy {
            max_retries: if request_causes.is_empty() {
                0
            } else {
                job.retry.max_retries
            },
            retry_on: request_causes,
            ..job.retry.clone()
        };
        BuildRequest {
            source: match &job.archive {
                Some(a) => match &a.url {
                    Some(url) => format!("archive:{url}"),
                    None => format!("archive:{}", work.join(ARCHIVE).display()),
                },
                None => job.image.clone(),
            },
            output: work.join(ARTIFACT),
            platform: job.platform.clone(),
            registry: RegistryOptions {
                insecure: self.insecure_registries.clone(),
                public_only: !self.allow_private_registries,
                // A tenant must not borrow the operator's registry logins.
                docker_config: false,
                retry,
                ..RegistryOptions::default()
            },
            cache: BlobCacheChoice::Dir(self.artifacts.dirs.blobs()),
            ext4: Default::default(),
            boot: BootOptions {
                init: match job.init {
                    "systemd" => Init::Systemd,
                    "custom" => Init::Custom,
                    _ => Init::DirectExec,
                },
                init_script: job.init_script.as_ref().map(|_| work.join("init-script")),
                entrypoint: job.entrypoint.clone(),
                cmd: job.cmd.clone(),
                env: job.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                working_dir: job.working_dir.clone(),
                user: job.user.clone(),
                hostname: job.hostname.clone(),
                compression: match job.compression {
                    Some("gzip") => CopyFormat::Gzip,
                    Some("zstd") => CopyFormat::Zstd,
                    _ => CopyFormat::None,
                },
                size_limit: job.size_limit,
                size_limit_name: "config.target.microvm_rootfs.size_limit_bytes".into(),
                storage_left,
            },
            // Every build holds for the artifact cache: an image once its
            // manifest is resolved, a Git project once its commit is
            // fetched and its FROM images are pinned.
            hold_after_resolve: true,
            steps,
            policy: PolicyOptions {
                optimize_for_size: job.optimize_for_size,
                remove_dev_packages: job.remove_dev_packages,
                harden: !job.no_harden,
                hardening_policy: (!job.no_harden)
                    .then(|| self.hardening_policy.clone())
                    .flatten(),
            },
            layers: LayerOptions {
                preserve: job.preserve_layers,
                store: Some(self.artifacts.dirs.layers()),
            },
            archive: match &job.archive {
                Some(a) => ArchiveOptions {
                    format: a.archive_type.clone(),
                    limits: limits.archive,
                    runtime: a.runtime.clone(),
                    version: a.version.clone(),
                    build_script: a.build_script.clone(),
                    dependencies: a.dependencies.clone(),
                    output_path: a.output_path.clone(),
                    public_only: !self.allow_private_archive_urls,
                },
                None => ArchiveOptions::default(),
            },
            project: match (&job.project, &job.archive) {
                (None, Some(a)) => ProjectOptions {
                    context: a.build_context.clone(),
                    build_id: Some(build_id.to_string()),
                    base_images: self.git.base_images.clone(),
                    host_sources: false,
                    ..ProjectOptions::default()
                },
                (Some(p), _) => ProjectOptions {
                    dockerfile: p.dockerfile.clone(),
                    context: p.context.clone(),
                    build_args: p.build_args.clone(),
                    secrets: p
                        .secret_ids
                        .iter()
                        .map(|id| BuildSecret {
                            id: id.clone(),
                            src: work.join(SECRETS).join(id),
                        })
                        .collect(),
                    build_id: Some(build_id.to_string()),
                    build_system: p.build_system,
                    base_images: self.git.base_images.clone(),
                    base_image: None,
                    cache_dependencies: p.cache_dependencies,
                    host_sources: false,
                },
                (None, None) => ProjectOptions::default(),
            },
            git: GitOptions {
                insecure_hosts: self.git.insecure_hosts.clone(),
                public_only: !self.git.allow_private,
                known_hosts: self.git.known_hosts.clone(),
                accept_new_host_keys: false,
                cache_namespace: tenant.to_string(),
                ..GitOptions::default()
            },
            credentials: None,
            git_credentials: None,
        }
    }

    /// The job's commands as the build's steps: the tier's limits (memory:
    /// the build's), the tenant's own engine storage.
    fn steps(&self, job: &Job, tenant: &str, limits: &Limits, memory_bytes: u64) -> Steps {
        Steps {
            commands: job.commands.clone(),
            run_as: None,
            // The docker strategy names none (Git builds' dependency
            // caching will).
            cache_dirs: Vec::new(),
            limits: StepLimits {
                memory_bytes,
                cpus: f64::from(limits.step_cpus),
                pids: limits.step_processes,
                // The server ends the whole build at its own deadline.
                timeout: limits.build_timeout,
            },
            network: job.step_network,
            sandbox: Default::default(),
            // Each tenant's own: nothing one tenant's steps leave in the
            // engine's storage (layers, cache mounts) is seen by another's.
            storage: Some(self.artifacts.dirs.steps(tenant)),
        }
    }

    /// Runs the build to its end. The build is RUNNING when this is called;
    /// this moves it on to its final state (or back to QUEUED on Requeue).
    pub async fn run(
        &self,
        store: Arc<Store>,
        build: &BuildRow,
        mut job: Job,
        timeout: Duration,
        mut stop: watch::Receiver<Option<Stop>>,
    ) -> Ended {
        let id = build.id.as_str();
        let tier = store
            .tenant(&build.tenant_id)
            .ok()
            .flatten()
            .map_or(crate::tier::Tier::Free, |t| t.tier);
        job.step_network = self.steps_network.unwrap_or(tier.limits().step_network);
        let work = self.artifacts.dirs.work(id);
        let deadline = tokio::time::Instant::now() + timeout;
        let result = self
            .attempt(&store, build, &job, &work, deadline, &mut stop)
            .await;
        if !job.commands.is_empty() {
            // A build process killed mid-step leaves its steps running in
            // their cgroup, and their network namespace: end them.
            let _ = tokio::task::spawn_blocking(builderd_build::sweep_steps).await;
        }
        let ended = self.settle(&store, build, &job, result, timeout);
        let _ = store.release_blobs(id);
        let _ = std::fs::remove_dir_all(&work);
        let (cache, store) = (self.artifacts.cache.clone(), store.clone());
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
    ) -> Result<(String, Option<Outcome>), RunError> {
        let id = build.id.as_str();
        let mut blobs = vec![(resolved.config_digest.clone(), resolved.config_size)];
        blobs.extend(resolved.layers.iter().map(|l| (l.digest.clone(), l.size)));
        let _ = store.lease_blobs(id, &blobs);
        let manifest = builderd_oci::Digest::parse(&resolved.manifest_digest).map_err(|e| {
            RunError::Failed {
                category: "build",
                message: format!("the build process resolved a bad digest: {e}"),
                retry: None,
            }
        })?;
        let key = self.artifacts.cache.key(&manifest, job, &build.tenant_id);
        let dest = self.artifact_dir(&build.tenant_id, id);
        let cache = self.artifacts.cache.clone();
        let k = key.clone();
        let hit = tokio::task::spawn_blocking(move || cache.link_into(&k, &dest))
            .await
            .map_err(|e| RunError::resource(format!("the artifact cache: {e}")))?
            .map_err(|e| RunError::resource(format!("the artifact cache: {e}")))?;
        self.metrics.cache_lookup(hit.is_some());
        Ok((key.clone(), hit.map(|meta| Outcome::Cached { key, meta })))
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
            Ok(Outcome::Built { key }) => {
                return ended(self.artifacts.finish(store, build, key.as_deref()))
            }
            Ok(Outcome::Cached { key, meta }) => {
                return ended(self.artifacts.finish_cached(store, build, job, &key, meta))
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
                retry,
            }) => {
                if let Some(cause) = retry {
                    if let Some(ended) =
                        retry_build(store, &self.metrics, build, job, cause, &message)
                    {
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

    /// Starts the build process: its work directory and request written,
    /// its cgroup and limits from the tenant's tier, in a process group of
    /// its own that dies with the server.
    fn spawn(
        &self,
        store: &Store,
        build: &BuildRow,
        job: &Job,
        work: &Path,
    ) -> Result<(tokio::process::Child, Arc<crate::confine::Cell>), RunError> {
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
        let steps = self.steps(job, &build.tenant_id, &limits, bounds.memory_bytes);
        if let Some(upload) = job.archive.as_ref().and_then(|a| a.upload.as_ref()) {
            self.link_upload(&build.tenant_id, upload, work)?;
        }
        let request = work.join(REQUEST);
        let room = Room {
            storage_left,
            limits: &limits,
        };
        let text = serde_json::to_vec_pretty(&self.request(
            job,
            work,
            &room,
            steps,
            &build.id,
            &build.tenant_id,
        ))
        .map_err(|e| RunError::resource(format!("the build request: {e}")))?;
        std::fs::write(&request, text)
            .map_err(|e| RunError::resource(format!("work directory: {e}")))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("build")
            .arg("--request")
            .arg(&request)
            .args(["--events", "json"])
            .current_dir(work)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("BUILDERD_CREDS")
            .env_remove("BUILDERD_GIT_CREDS")
            .env_remove("BUILDERD_GIT_TOKEN")
            .env_remove("BUILDERD_SSH_KEY_FILE")
            .process_group(0)
            .kill_on_drop(true);
        if let Some(sealed) = &build.creds {
            let secrets = self.sealer.open(sealed).map_err(|e| RunError::Failed {
                category: "build",
                message: e,
                retry: None,
            })?;
            give_secrets(&mut cmd, &secrets, work)
                .map_err(|e| RunError::resource(format!("the build's secrets: {e}")))?;
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
        let child = cmd.spawn().map_err(|e| RunError::Failed {
            category: "build",
            message: format!("cannot start {}: {e}", self.exe.display()),
            retry: None,
        })?;
        Ok((child, cell))
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
        let (mut child, cell) = self.spawn(store, build, job, work)?;
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
        let mut follow = Follow::new(id, self.metrics.clone());
        let mut stderr_open = true;
        let mut resolved_key = None;
        let status = loop {
            tokio::select! {
                line = lines.next(), if stderr_open => match line {
                    Some(Ok(line)) => {
                        let Some(resolved) = follow.event(store, &line) else { continue };
                        match self.on_resolved(store, build, job, &resolved).await {
                            Ok((_, Some(cached))) => {
                                kill();
                                let _ = child.wait().await;
                                return Ok(cached);
                            }
                            Ok((key, None)) => {
                                resolved_key = Some(key);
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
            Ok(s) if s.success() => Ok(Outcome::Built { key: resolved_key }),
            Ok(_) if cell.oom_killed() => Err(RunError::Failed {
                category: "resource",
                message: format!(
                    "the build used more memory than its limit of {} bytes and was stopped",
                    cell.memory_limit()
                ),
                retry: None,
            }),
            Ok(s) => Err(follow.failure.take().unwrap_or_else(|| RunError::Failed {
                category: "build",
                message: format!("the build process ended with {s} without saying why"),
                retry: None,
            })),
            Err(e) => Err(RunError::Failed {
                category: "build",
                message: format!("waiting for the build process: {e}"),
                retry: None,
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

/// Completed, or failed keeping the artifact.
fn ended(completed: bool) -> Ended {
    if completed {
        Ended::Completed
    } else {
        Ended::Failed
    }
}

/// The build request's name in the work directory.
const REQUEST: &str = "request.json";
/// The build secrets' directory in the work directory.
const SECRETS: &str = "secrets";

/// Hands the build process its secrets: the registry's and the Git server's
/// through its environment (never its arguments), an SSH key and the build
/// secrets as files of mode 0600 in the work directory (the server's
/// alone, and removed with it).
fn give_secrets(
    cmd: &mut Command,
    secrets: &crate::sealed::BuildSecrets,
    work: &Path,
) -> std::io::Result<()> {
    use crate::sealed::GitSecret;
    let private = |path: &Path, bytes: &[u8]| {
        builderd_build::private_file(path, bytes).map_err(std::io::Error::other)
    };
    if let Some(creds) = &secrets.registry {
        cmd.env("BUILDERD_CREDS", creds);
    }
    match &secrets.git {
        Some(GitSecret::Token(t)) => {
            cmd.env("BUILDERD_GIT_TOKEN", t);
        }
        Some(GitSecret::Basic { username, password }) => {
            cmd.env("BUILDERD_GIT_CREDS", format!("{username}:{password}"));
        }
        Some(GitSecret::SshKey(key)) => {
            let path = work.join("ssh-key");
            private(&path, key.as_bytes())?;
            cmd.env("BUILDERD_SSH_KEY_FILE", path);
        }
        None => {}
    }
    if !secrets.build.is_empty() {
        let dir = work.join(SECRETS);
        std::fs::create_dir(&dir)?;
        for (id, value) in &secrets.build {
            private(&dir.join(id), value.as_bytes())?;
        }
    }
    Ok(())
}

pub enum RunError {
    Stopped(Stop),
    TimedOut,
    Failed {
        category: &'static str,
        message: String,
        /// Trying again later may pass: the machine ran short for a moment
        /// (TEMPORARY_RESOURCE_ERROR), or the source's server could not be
        /// reached (NETWORK_ERROR).
        retry: Option<RetryCause>,
    },
}

impl RunError {
    pub fn resource(message: String) -> RunError {
        RunError::Failed {
            category: "resource",
            message,
            retry: None,
        }
    }
}

/// A build that failed for a passing shortage goes back to the queue, to
/// run again after the policy's wait, if its policy retries such failures
/// and has retries left. Answers None when it does not.
fn retry_build(
    store: &Store,
    metrics: &crate::metrics::Metrics,
    build: &BuildRow,
    job: &Job,
    cause: RetryCause,
    message: &str,
) -> Option<Ended> {
    let id = build.id.as_str();
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
    record_retry(store, metrics, id, &notice, "build");
    let not_before = crate::store::now_ms() + delay.as_millis() as i64;
    store
        .retry_later(id, not_before)
        .ok()?
        .then_some(Ended::Retrying)
}

/// Keeps a retry in the build's status and logs.
fn record_retry(
    store: &Store,
    metrics: &crate::metrics::Metrics,
    id: &str,
    n: &builderd_oci::RetryNotice,
    scope: &str,
) {
    metrics.retry(n.cause.name(), scope);
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
    metrics: Arc<crate::metrics::Metrics>,
}

impl Follow {
    fn new(id: &str, metrics: Arc<crate::metrics::Metrics>) -> Follow {
        Follow {
            id: id.to_string(),
            // The server moved the build to PREPARING before starting it.
            state: State::Preparing,
            failure: None,
            metrics,
        }
    }

    /// Takes in one line; answers what the image resolved to when the line
    /// says so (the build process then waits for the server's word).
    fn event(&mut self, store: &Store, line: &str) -> Option<Resolved> {
        let id = self.id.as_str();
        let event = match serde_json::from_str::<Event>(line) {
            Ok(event) => event,
            Err(e) if line.trim_start().starts_with('{') => {
                // An event this server does not know: a build process of
                // another version, or a bug. Said, never skipped quietly.
                let _ = store.log(
                    id,
                    "error",
                    &format!(
                        "the build process sent an event this server does not know ({e}): {line}"
                    ),
                    "builderd",
                );
                return None;
            }
            Err(_) => {
                // Not an event: a panic message or a tool's own output.
                let _ = store.log(id, "warn", line, "build");
                return None;
            }
        };
        match event {
            Event::Resolved(resolved) => return Some(resolved),
            Event::Stage(stage) => {
                let to = State::of_stage(stage);
                if to != self.state && store.transition(id, &State::ACTIVE, to).unwrap_or(false) {
                    self.state = to;
                    let (start, _) = to.percent_range();
                    let _ = store.set_progress(
                        id,
                        &serde_json::json!({ "stage": to.name().to_ascii_lowercase(), "percent": start })
                            .to_string(),
                    );
                }
            }
            Event::Progress(p) => {
                let (start, end) = self.state.percent_range();
                let percent = if p.total > 0 {
                    start
                        + ((end - start) as f64 * p.done.min(p.total) as f64 / p.total as f64)
                            as i32
                } else {
                    start
                };
                let progress = serde_json::json!({
                    "stage": self.state.name().to_ascii_lowercase(),
                    "percent": percent,
                    "step": p.step,
                    "done": p.done,
                    "total": p.total,
                    "files": p.files,
                });
                let _ = store.set_progress(id, &progress.to_string());
            }
            Event::Log(l) => {
                let _ = store.log(id, l.level.name(), &l.message, "build");
            }
            Event::Usage(u) => {
                let _ = store.add_usage(
                    id,
                    &Usage {
                        cpu_ms: u.cpu_ms as i64,
                        peak_memory_bytes: u.peak_memory_bytes as i64,
                        disk_written_bytes: u.disk_written_bytes as i64,
                    },
                );
            }
            Event::Pulled { bytes } => self.metrics.pulled(bytes),
            Event::Retry(r) => record_retry(store, &self.metrics, id, &r.notice(), "request"),
            Event::Error(f) => {
                self.failure = Some(RunError::Failed {
                    category: f.category.name(),
                    message: f.message,
                    retry: if f.temporary {
                        Some(RetryCause::TemporaryResource)
                    } else if f.network {
                        Some(RetryCause::Network)
                    } else {
                        None
                    },
                });
            }
            // A step's command and output, line by line, in the build's log.
            Event::StepStarted(s) => {
                let message = format!("step {}: $ {}", s.index + 1, s.command);
                let _ = store.log(id, "info", &message, "step");
            }
            Event::StepOutput(o) => {
                let level = match o.stream {
                    builderd_build::OutputStream::Stdout => "info",
                    builderd_build::OutputStream::Stderr => "warn",
                };
                let _ = store.log(id, level, &o.line, "step");
            }
            Event::StepFinished(r) => {
                let message = format!(
                    "step {}: exit code {} after {} ms",
                    r.index + 1,
                    r.exit_code,
                    r.duration_ms
                );
                let _ = store.log(id, "info", &message, "step");
            }
            // Per-layer download progress is for terminals.
            Event::Download(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(data: &Path, exe: PathBuf) -> Runner {
        Runner {
            confinement: Arc::new(crate::confine::Confinement::Rlimits),
            max_build_memory: None,
            metrics: Arc::default(),
            exe,
            artifacts: Artifacts {
                dirs: crate::paths::DataDir(data.to_path_buf()),
                cache: Arc::new(crate::cache::Cache::open(data, None, 0).unwrap()),
            },
            insecure_registries: vec!["reg:5000".into()],
            hardening_policy: None,
            allow_private_registries: false,
            retry_defaults: crate::job::default_retry_policy(),
            steps_network: None,
            git: GitPolicy::default(),
            allow_private_archive_urls: false,
            sealer: Arc::new(
                crate::sealed::Sealer::open_or_create(&data.join("secrets.key")).unwrap(),
            ),
        }
    }

    fn job() -> Job {
        Job {
            image: "alpine".into(),
            init: "custom",
            init_script: Some("#!/bin/sh\n".into()),
            compression: Some("gzip"),
            size_limit: Some(10),
            cmd: Some(vec!["sh".into(), "-c".into(), "echo a b".into()]),
            env: [("A".to_string(), "1 2".to_string())].into(),
            retry: crate::job::default_retry_policy(),
            ..Job::default()
        }
    }

    #[test]
    fn a_job_becomes_a_build_request() {
        let data = tempfile::tempdir().unwrap();
        let r = runner(data.path(), "builderd".into()).request(
            &job(),
            Path::new("/w"),
            &Room {
                storage_left: Some(1000),
                limits: &crate::tier::Tier::Pro.limits(),
            },
            Steps::default(),
            "b-1",
            "acme",
        );
        assert_eq!(r.source, "alpine");
        assert_eq!(r.output, Path::new("/w/rootfs.ext4"));
        assert!(r.hold_after_resolve && r.registry.public_only && !r.registry.docker_config);
        assert_eq!(r.registry.insecure, ["reg:5000"]);
        assert_eq!(r.cache, BlobCacheChoice::Dir(data.path().join("blobs")));
        assert_eq!(r.boot.init, Init::Custom);
        assert_eq!(
            r.boot.init_script.as_deref(),
            Some(Path::new("/w/init-script"))
        );
        assert_eq!(r.boot.compression, CopyFormat::Gzip);
        assert_eq!(
            (r.boot.size_limit, r.boot.storage_left),
            (Some(10), Some(1000))
        );
        assert_eq!(
            r.boot.cmd.as_deref(),
            Some(&["sh".to_string(), "-c".into(), "echo a b".into()][..])
        );
        assert_eq!(r.boot.env, ["A=1 2"]);
        // The registry's share of the retry policy: a full disk is retried
        // by running the build again, here.
        assert_eq!(r.registry.retry.max_retries, 3);
        assert_eq!(
            r.registry.retry.retry_on,
            [RetryCause::Network, RetryCause::RateLimit]
        );
        assert_eq!(r.project.dockerfile, None);
    }

    #[test]
    fn a_git_job_becomes_a_project_build_in_the_tenants_namespace() {
        let data = tempfile::tempdir().unwrap();
        let job = Job {
            image: "git+https://git.example.com/app.git#v1".into(),
            source_type: "git_repository",
            project: Some(crate::job::GitJob {
                dockerfile: Some("Dockerfile.prod".into()),
                context: Some("services/api".into()),
                build_args: vec![("V".into(), "{{.GitCommit}}".into())],
                secret_ids: vec!["npm".into()],
                build_system: builderd_build::BuildSystem::Buildpack,
                cache_dependencies: true,
            }),
            ..job()
        };
        let r = runner(data.path(), "builderd".into()).request(
            &job,
            Path::new("/w"),
            &Room {
                storage_left: None,
                limits: &crate::tier::Tier::Pro.limits(),
            },
            Steps::default(),
            "b-7",
            "acme",
        );
        assert_eq!(r.source, "git+https://git.example.com/app.git#v1");
        // Held once its commit and Containerfile are known: the artifact
        // cache may have it.
        assert!(r.hold_after_resolve);
        assert_eq!(r.project.dockerfile.as_deref(), Some("Dockerfile.prod"));
        assert_eq!(r.project.context.as_deref(), Some("services/api"));
        assert_eq!(r.project.build_id.as_deref(), Some("b-7"));
        assert_eq!(
            r.project.build_system,
            builderd_build::BuildSystem::Buildpack
        );
        assert_eq!(
            r.project.secrets,
            [BuildSecret {
                id: "npm".into(),
                src: "/w/secrets/npm".into()
            }]
        );
        assert!(r.project.cache_dependencies);
        // A tenant's Containerfile takes nothing the server reaches but
        // its registries (no server files, no ADD of a URL).
        assert!(!r.project.host_sources);
        assert_eq!(r.git.cache_namespace, "acme");
        assert!(r.git.public_only && !r.git.accept_new_host_keys);
        // The serialised request holds no secret's value, only its path.
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("/w/secrets/npm"));
    }

    #[test]
    fn a_jobs_commands_run_with_the_tiers_limits_in_the_tenants_storage() {
        let data = tempfile::tempdir().unwrap();
        let r = runner(data.path(), "builderd".into());
        let job = Job {
            commands: vec!["npm ci".into()],
            step_network: StepNetwork::Egress,
            ..job()
        };
        let limits = crate::tier::Tier::Pro.limits();
        let steps = r.steps(&job, "acme", &limits, 512 << 20);
        assert_eq!(steps.commands, ["npm ci"]);
        assert_eq!(steps.network, StepNetwork::Egress);
        assert_eq!(
            (
                steps.limits.memory_bytes,
                steps.limits.cpus,
                steps.limits.pids
            ),
            (512 << 20, 2.0, 512)
        );
        assert_eq!(steps.limits.timeout, limits.build_timeout);
        assert_eq!(steps.storage, Some(data.path().join("steps/acme")));
        let other = r.steps(&job, "globex", &limits, 512 << 20);
        assert_ne!(steps.storage, other.storage, "each tenant's own");
    }

    /// A stand-in for `builderd build`: keeps the request it is given and
    /// what it is told on stdin, and says one event this server does not know.
    const FAKE_BUILD: &str = r#"#!/bin/sh
out="$(dirname "$0")"
cp "$3" "$out/received.json"
echo '{"stage":"downloading"}' >&2
echo '{"gossip":{"about":"nothing"}}' >&2
echo '{"error":{"message":"the fake build ends here","category":"build","temporary":false}}' >&2
exit 1
"#;

    #[tokio::test]
    async fn the_build_process_gets_a_request_and_an_unknown_event_is_logged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("fake-builderd");
        std::fs::write(&exe, FAKE_BUILD).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let store = Arc::new(Store::open(&data.join("db")).unwrap());
        store
            .create_tenant("t", crate::tier::Tier::Pro, &"h".repeat(64))
            .unwrap();
        store
            .insert_build(&crate::store::NewBuild {
                id: "b1",
                tenant_id: "t",
                source_type: "docker_image",
                tier: crate::tier::Tier::Pro,
                config_json: "{}",
                creds: None,
                max_interruptions: 3,
                daily_limit: 10,
                storage_limit: 1 << 30,
                log: "queued",
            })
            .unwrap();
        assert!(store
            .transition("b1", &[State::Queued], State::Running)
            .unwrap());
        let build = store.build("t", "b1").unwrap().unwrap();
        let runner = runner(&data, exe);
        let (_tx, rx) = watch::channel(None);
        let ended = runner
            .run(store.clone(), &build, job(), Duration::from_secs(30), rx)
            .await;
        assert_eq!(ended, Ended::Failed);
        let received: BuildRequest =
            serde_json::from_slice(&std::fs::read(dir.path().join("received.json")).unwrap())
                .unwrap();
        assert_eq!(received.source, "alpine");
        assert!(received.hold_after_resolve);
        let logs: Vec<String> = store
            .logs_after("b1", 0)
            .unwrap()
            .into_iter()
            .map(|l| format!("{} {}", l.level, l.message))
            .collect();
        assert!(
            logs.iter().any(|l| l
                .starts_with("error the build process sent an event this server does not know")
                && l.contains("gossip")),
            "{logs:?}"
        );
        let b = store.build("t", "b1").unwrap().unwrap();
        assert_eq!(b.error_message.as_deref(), Some("the fake build ends here"));
        // The stage it told was taken.
        let states: Vec<State> = store
            .transitions("b1")
            .unwrap()
            .into_iter()
            .map(|t| t.0)
            .collect();
        assert!(states.contains(&State::Downloading), "{states:?}");
    }
}
