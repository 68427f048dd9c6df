//! builder.v1.BuilderService: each RPC scoped to the caller's tenant (another
//! tenant's build is `not_found`, never `permission_denied`, so ids leak nothing).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use buffa::{EnumValue, MessageField};
use buffa_types::google::protobuf::Timestamp;
use connectrpc::{
    ConnectError, InboundStream, RequestContext, Response, ServiceRequest, ServiceResult,
    ServiceStream,
};
use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::auth;
use crate::job;
use crate::paths::{layer_file, ARTIFACT};
use crate::proto::builder::v1::*;
use crate::runner::{Runner, Stop};
use crate::scheduler::Scheduler;
use crate::state::State;
use crate::store::{BuildRow, NewBuild, Store, StoreError, Tenant};

pub struct Api {
    pub store: Arc<Store>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Followed log streams open, by tenant.
    pub followers: Followers,
    pub scheduler: Arc<Scheduler>,
    pub runner: Arc<Runner>,
    pub trust_tenant_header: bool,
    /// Webhooks may go to loopback and private addresses.
    pub allow_private_webhooks: bool,
    pub uploads: crate::upload_rules::Uploads,
}

/// What UploadArchive answers, in either form (crate::upload).
pub fn upload_answer(upload: &crate::store::Upload) -> UploadArchiveResponse {
    UploadArchiveResponse {
        upload_id: upload.id.clone(),
        sha256: upload.sha256.clone(),
        size_bytes: upload.size_bytes,
        expires_at: timestamp(upload.expires_ms),
        ..Default::default()
    }
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// Artifact chunks: well under gRPC's default 4 MiB message limit.
const CHUNK: usize = 1 << 20;
/// How long CancelBuild waits for the work to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// The retries a status lists: the newest (a build's retries are bounded by
/// its policy, but a build of many layers may still have a few hundred).
const LISTED_RETRIES: usize = 50;
/// Followed log streams one tenant may hold open at once.
const MAX_FOLLOWED: usize = 16;

/// Followed log streams open, by tenant.
#[derive(Default)]
pub struct Followers(Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

/// One followed stream, counted while it lives.
pub struct Following {
    of: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    tenant: String,
}

impl Followers {
    /// Counts a stream for `tenant`, unless it holds `MAX_FOLLOWED`.
    fn hold(&self, tenant: &str) -> Option<Following> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(tenant.to_string()).or_default();
        if *n >= MAX_FOLLOWED {
            return None;
        }
        *n += 1;
        Some(Following {
            of: self.0.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut map = self.of.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.tenant);
            }
        }
    }
}

fn internal(e: StoreError) -> ConnectError {
    ConnectError::internal(e.to_string())
}

pub fn timestamp(ms: i64) -> MessageField<Timestamp, buffa::Inline<Timestamp>> {
    MessageField::some(Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        ..Default::default()
    })
}

fn new_build_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the kernel's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("build_{hex}")
}

impl Api {
    pub fn caller(&self, headers: &http::HeaderMap) -> Result<Tenant, ConnectError> {
        auth::caller(&self.store, headers, self.trust_tenant_header)
    }

    /// The caller's build, or `not_found`.
    pub fn owned(&self, tenant: &Tenant, id: &str) -> Result<BuildRow, ConnectError> {
        if id.is_empty() {
            return Err(ConnectError::invalid_argument("build_id is empty"));
        }
        self.store
            .build(&tenant.id, id)
            .map_err(internal)?
            .ok_or_else(|| ConnectError::not_found(format!("no build {id:?}")))
    }

    /// A build's retries, as the API shows them.
    fn retries(&self, b: &BuildRow) -> Result<Vec<RetryAttempt>, ConnectError> {
        Ok(self
            .store
            .retries(&b.id, LISTED_RETRIES)
            .map_err(internal)?
            .into_iter()
            .map(|r| RetryAttempt {
                attempt: r.attempt as i32,
                cause: r.cause,
                message: r.message,
                delay_ms: r.delay_ms,
                at: timestamp(r.at_ms),
                scope: r.scope,
                ..Default::default()
            })
            .collect())
    }

    pub fn status(&self, b: &BuildRow) -> Result<GetBuildStatusResponse, ConnectError> {
        Ok(GetBuildStatusResponse {
            build_id: b.id.clone(),
            state: EnumValue::from(b.state.proto()),
            progress: MessageField::some(progress(b)),
            error: error(b).into(),
            artifact: artifact(b).into(),
            created_at: timestamp(b.created_ms),
            updated_at: timestamp(b.updated_ms),
            retries: self.retries(b)?,
            attempts: b.attempts as i32,
            cache_hit: b.cache_hit,
            resource_usage: MessageField::some(resource_usage(b)),
            expired_at: b.expired_ms.map(timestamp).unwrap_or_default(),
            ..Default::default()
        })
    }

    fn job(&self, b: &BuildRow) -> Result<BuildJob, ConnectError> {
        let config: BuildConfig = serde_json::from_str(&b.config_json)
            .map_err(|e| ConnectError::internal(format!("stored config: {e}")))?;
        let transitions = self
            .store
            .transitions(&b.id)
            .map_err(internal)?
            .into_iter()
            .map(|(s, at)| StateTransition {
                state: EnumValue::from(s.proto()),
                at: timestamp(at),
                ..Default::default()
            })
            .collect();
        Ok(BuildJob {
            build_id: b.id.clone(),
            tenant_id: b.tenant_id.clone(),
            config: MessageField::some(config),
            state: EnumValue::from(b.state.proto()),
            created_at: timestamp(b.created_ms),
            started_at: b.started_ms.map(timestamp).unwrap_or_default(),
            completed_at: b.finished_ms.map(timestamp).unwrap_or_default(),
            progress: MessageField::some(progress(b)),
            error: error(b).into(),
            artifact: artifact(b).into(),
            transitions,
            attempts: b.attempts as i32,
            retries: self.retries(b)?,
            cache_hit: b.cache_hit,
            resource_usage: MessageField::some(resource_usage(b)),
            expired_at: b.expired_ms.map(timestamp).unwrap_or_default(),
            ..Default::default()
        })
    }

    /// The artifact file of a completed build, its size and sha256: the
    /// image, its compressed copy, or (`layer`) the disk of a kept layer.
    pub fn artifact_file(
        &self,
        b: &BuildRow,
        compressed: bool,
        layer: Option<u32>,
    ) -> Result<(PathBuf, i64, String), ConnectError> {
        if b.expired_ms.is_some() {
            return Err(ConnectError::not_found(format!(
                "the artifact of build {} was deleted by the retention policy",
                b.id
            )));
        }
        let a = match (b.state, artifact(b)) {
            (State::Completed, Some(a)) => a,
            (s, _) => {
                return Err(ConnectError::failed_precondition(format!(
                    "build {} is {}, not COMPLETED: it has no artifact",
                    b.id,
                    s.name()
                )))
            }
        };
        let dir = self.runner.artifact_dir(&b.tenant_id, &b.id);
        if let Some(n) = layer {
            let meta: Value = serde_json::from_str(&a.metadata_json).unwrap_or_default();
            let disks = meta["layer_disks"].as_array().map_or(0, Vec::len);
            let disk = &meta["layer_disks"][n as usize];
            if disk.is_null() {
                return Err(ConnectError::invalid_argument(format!(
                    "layer {n}: build {} has {disks} layer disks (preserve_layers); count from 0",
                    b.id
                )));
            }
            return Ok((
                dir.join(layer_file(n as usize)),
                disk["size_bytes"].as_i64().unwrap_or(0),
                disk["sha256"].as_str().unwrap_or_default().to_string(),
            ));
        }
        let path = match (compressed, a.compression.as_str()) {
            (false, _) => return Ok((dir.join(ARTIFACT), a.size_bytes, a.sha256)),
            (true, "gzip") => dir.join(format!("{ARTIFACT}.gz")),
            (true, "zstd") => dir.join(format!("{ARTIFACT}.zst")),
            (true, _) => {
                return Err(ConnectError::failed_precondition(
                    "this build made no compressed copy (target.microvm_rootfs.compression)",
                ))
            }
        };
        Ok((path, a.compressed_size_bytes, a.compressed_sha256))
    }

    /// Refuses at once an image whose registry the outbound policy does not
    /// allow (an address, or a name resolving to one); the build process
    /// checks every connection it makes again, redirects and realms too.
    async fn check_source_host(&self, job: &job::Job) -> Result<(), ConnectError> {
        let (host, policy, field) = if job.project.is_some() {
            let Some(Ok(builderd_build::Project::Git {
                origin: builderd_build::Origin::Remote(r),
                ..
            })) = builderd_build::Project::parse(&job.image)
            else {
                return Ok(());
            };
            let policy =
                builderd_oci::Outbound::new(self.runner.git.allow_private, "--allow-private-git");
            (r.host, policy, "config.source.git_repository.clone_url")
        } else {
            let Ok(builderd_oci::Source::Registry(r)) = builderd_oci::Source::parse(&job.image)
            else {
                return Ok(());
            };
            let host = if r.registry == "docker.io" {
                "registry-1.docker.io".to_string()
            } else {
                r.registry
            };
            let policy = builderd_oci::Outbound::new(
                self.runner.allow_private_registries,
                "--allow-private-registries",
            );
            (host, policy, "config.source.docker_image.image_uri")
        };
        match policy.check_host(&host).await {
            Err(builderd_net::HostError::NotAllowed(e)) => {
                Err(ConnectError::invalid_argument(format!("{field}: {e}")))
            }
            // A name that does not resolve now may later; the build says so.
            Ok(()) | Err(builderd_net::HostError::Unresolved(_)) => Ok(()),
        }
    }

    /// Stops a build and waits (up to 2 s) for its work to stop.
    async fn cancel(&self, b: &BuildRow) -> Result<State, ConnectError> {
        if b.state == State::Queued
            && self
                .store
                .transition(&b.id, &[State::Queued], State::Cancelled)
                .map_err(internal)?
        {
            let _ = self
                .store
                .log(&b.id, "info", "cancelled while queued", "builderd");
            return Ok(State::Cancelled);
        }
        if self.scheduler.stop(&b.id, Stop::Cancel) {
            let _ = tokio::time::timeout(CANCEL_WAIT, self.scheduler.wait_stopped(&b.id)).await;
        } else if !b.state.is_terminal() {
            // Active in the database but run by no one here: a run this
            // process does not own, left by a crash; nothing to stop.
            self.store
                .transition(&b.id, &State::unfinished(), State::Cancelled)
                .map_err(internal)?;
        }
        let now = self.store.state(&b.id).map_err(internal)?;
        Ok(now.unwrap_or(State::Cancelled))
    }
}

fn progress(b: &BuildRow) -> BuildProgress {
    let p: Value = serde_json::from_str(&b.progress_json).unwrap_or(Value::Null);
    let (start, _) = b.state.percent_range();
    let percent = match b.state {
        State::Completed => 100,
        s if s.is_terminal() => p["percent"].as_i64().unwrap_or(0) as i32,
        _ => p["percent"].as_i64().map_or(start, |n| n as i32).max(start),
    };
    BuildProgress {
        stage: b.state.name().to_ascii_lowercase(),
        percent,
        current_step: p["step"].as_str().unwrap_or_default().to_string(),
        bytes_done: p["done"].as_i64().unwrap_or(0),
        bytes_total: p["total"].as_i64().unwrap_or(0),
        files_done: p["files"].as_i64().unwrap_or(0),
        ..Default::default()
    }
}

fn error(b: &BuildRow) -> Option<BuildError> {
    let message = b.error_message.clone()?;
    let category = match b.error_category.as_deref() {
        Some("source") => ErrorCategory::ERROR_CATEGORY_SOURCE,
        Some("resource") => ErrorCategory::ERROR_CATEGORY_RESOURCE,
        Some("timeout") => ErrorCategory::ERROR_CATEGORY_TIMEOUT,
        Some("build") => ErrorCategory::ERROR_CATEGORY_BUILD,
        _ => ErrorCategory::ERROR_CATEGORY_UNSPECIFIED,
    };
    Some(BuildError {
        category: EnumValue::from(category),
        message,
        ..Default::default()
    })
}

fn resource_usage(b: &BuildRow) -> ResourceUsage {
    ResourceUsage {
        cpu_seconds: b.usage.cpu_ms as f64 / 1000.0,
        peak_memory_bytes: b.usage.peak_memory_bytes,
        disk_written_bytes: b.usage.disk_written_bytes,
        disk_bytes: b.artifact_bytes,
        ..Default::default()
    }
}

/// The artifact as recorded from the build's metadata file.
fn artifact(b: &BuildRow) -> Option<Artifact> {
    let meta: Value = serde_json::from_str(b.artifact_json.as_deref()?).ok()?;
    let init = match meta["init_strategy"].as_str() {
        Some("INIT_STRATEGY_SYSTEMD") => InitStrategy::INIT_STRATEGY_SYSTEMD,
        Some("INIT_STRATEGY_CUSTOM") => InitStrategy::INIT_STRATEGY_CUSTOM,
        Some("INIT_STRATEGY_DIRECT_EXEC") => InitStrategy::INIT_STRATEGY_DIRECT_EXEC,
        _ => InitStrategy::INIT_STRATEGY_UNSPECIFIED,
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Some(Artifact {
        file_name: ARTIFACT.to_string(),
        size_bytes: meta["image"]["size_bytes"].as_i64().unwrap_or(0),
        sha256: text(&meta["image"]["sha256"]),
        compression: text(&meta["compressed"]["format"]),
        compressed_size_bytes: meta["compressed"]["size_bytes"].as_i64().unwrap_or(0),
        compressed_sha256: text(&meta["compressed"]["sha256"]),
        manifest_digest: text(&meta["manifest_digest"]),
        kernel_cmdline: text(&meta["kernel_cmdline"]),
        init_strategy: EnumValue::from(init),
        metadata_json: meta.to_string(),
        ..Default::default()
    })
}

// The methods name their concrete types where the trait says `impl Encodable`.
#[allow(refining_impl_trait)]
impl BuilderService for Api {
    async fn create_build(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CreateBuildRequest>,
    ) -> ServiceResult<CreateBuildResponse> {
        let tenant = self.caller(ctx.headers())?;
        let req = request.to_owned_message();
        let config = req
            .config
            .into_option()
            .ok_or_else(|| ConnectError::invalid_argument("config is missing"))?;
        if let Some(t) = config.tenant.as_option() {
            if !t.tenant_id.is_empty() && t.tenant_id != tenant.id {
                return Err(ConnectError::permission_denied(format!(
                    "config.tenant.tenant_id is {:?} but the caller is tenant {:?}",
                    t.tenant_id, tenant.id
                )));
            }
        }
        let job = job::job(&config, &self.runner.retry_defaults)?;
        self.check_source_host(&job).await?;
        if let Some(upload) = job.archive.as_ref().and_then(|a| a.upload.as_ref()) {
            // The upload is the caller's; its lifetime starts again.
            let expires = crate::store::now_ms() + self.uploads.lifetime.as_millis() as i64;
            self.store
                .use_upload(&tenant.id, upload, expires)
                .map_err(internal)?
                .ok_or_else(|| {
                    ConnectError::not_found(format!(
                        "config.source.archive.archive_url: no upload {upload} (an upload is its \
                         tenant's alone, and goes once unused for {})",
                        humantime::format_duration(self.uploads.lifetime)
                    ))
                })?;
        }
        if let Some(url) = job.archive.as_ref().and_then(|a| a.url.as_ref()) {
            crate::webhook::check_address(
                url.split('#').next().unwrap_or(url),
                self.runner.allow_private_archive_urls,
                "--allow-private-archive-urls",
            )
            .await
            .map_err(|e| {
                ConnectError::invalid_argument(format!("config.source.archive.archive_url: {e}"))
            })?;
        }
        let secrets = job::secrets(&config)?;
        if let Some(w) = config.webhook.as_option().filter(|w| !w.url.is_empty()) {
            crate::webhook::check_url(&w.url, self.allow_private_webhooks)
                .await
                .map_err(|e| ConnectError::invalid_argument(format!("config.webhook.url: {e}")))?;
        }
        let id = new_build_id();
        let limits = tenant.tier.limits();
        let config_json = serde_json::to_string(&job::redacted(&config))
            .map_err(|e| ConnectError::internal(e.to_string()))?;
        let creds = self.runner.sealer.seal(&secrets);
        let log = format!("queued: {}", job.image);
        let created = self
            .store
            .insert_build(&NewBuild {
                id: &id,
                tenant_id: &tenant.id,
                source_type: job.source_type,
                tier: tenant.tier,
                config_json: &config_json,
                creds: creds.as_deref(),
                max_interruptions: i64::from(job.retry.max_retries),
                daily_limit: limits.daily_builds,
                storage_limit: limits.storage_bytes,
                log: &log,
            })
            .map_err(|e| match e {
                StoreError::Conflict(m) => {
                    ConnectError::resource_exhausted(format!("{m} (tier {})", tenant.tier.name()))
                }
                e => internal(e),
            })?;
        self.scheduler.wake();
        Response::ok(CreateBuildResponse {
            build_id: id,
            state: EnumValue::from(State::Queued.proto()),
            created_at: timestamp(created),
            tenant_context: MessageField::some(TenantContext {
                tenant_id: tenant.id.clone(),
                tier: EnumValue::from(tenant.tier.proto()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn get_build(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, GetBuildRequest>,
    ) -> ServiceResult<GetBuildResponse> {
        let tenant = self.caller(ctx.headers())?;
        let b = self.owned(&tenant, request.build_id)?;
        Response::ok(GetBuildResponse {
            build: MessageField::some(self.job(&b)?),
            ..Default::default()
        })
    }

    async fn get_build_status(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, GetBuildStatusRequest>,
    ) -> ServiceResult<GetBuildStatusResponse> {
        let tenant = self.caller(ctx.headers())?;
        let b = self.owned(&tenant, request.build_id)?;
        Response::ok(self.status(&b)?)
    }

    async fn get_build_artifact(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, GetBuildArtifactRequest>,
    ) -> ServiceResult<ServiceStream<GetBuildArtifactResponse>> {
        let tenant = self.caller(ctx.headers())?;
        let b = self.owned(&tenant, request.build_id)?;
        let (path, total, sha256) = self.artifact_file(&b, request.compressed, request.layer)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| ConnectError::internal(format!("the artifact: {e}")))?;
        let chunks =
            futures::stream::unfold((file, 0i64, false), move |(mut file, offset, done)| {
                let sha256 = sha256.clone();
                async move {
                    if done {
                        return None;
                    }
                    let mut data = vec![0u8; CHUNK];
                    let mut filled = 0;
                    while filled < CHUNK {
                        match file.read(&mut data[filled..]).await {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) => {
                                let err =
                                    ConnectError::internal(format!("reading the artifact: {e}"));
                                return Some((Err(err), (file, offset, true)));
                            }
                        }
                    }
                    if filled == 0 && offset > 0 {
                        return None;
                    }
                    data.truncate(filled);
                    let last = filled < CHUNK;
                    let chunk = GetBuildArtifactResponse {
                        data,
                        offset,
                        total_size: total,
                        sha256,
                        ..Default::default()
                    };
                    Some((Ok(chunk), (file, offset + filled as i64, last)))
                }
            });
        Response::ok(Box::pin(chunks) as ServiceStream<_>)
    }

    async fn list_builds(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ListBuildsRequest>,
    ) -> ServiceResult<ListBuildsResponse> {
        let tenant = self.caller(ctx.headers())?;
        let filter = request
            .state_filter
            .as_known()
            .ok_or_else(|| ConnectError::invalid_argument("state_filter: unknown state"))?;
        let state = State::from_proto(filter);
        let size = match request.page_size {
            n if n < 0 => return Err(ConnectError::invalid_argument("page_size is negative")),
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let before = match request.page_token {
            "" => None,
            t => Some(t.parse::<i64>().map_err(|_| {
                ConnectError::invalid_argument("page_token: not one this server gave")
            })?),
        };
        let (rows, total) = self
            .store
            .list_builds(&tenant.id, state, before, size + 1)
            .map_err(internal)?;
        let more = rows.len() > size;
        let rows = &rows[..rows.len().min(size)];
        let next = match (more, rows.last()) {
            (true, Some(last)) => last.seq.to_string(),
            _ => String::new(),
        };
        let builds = rows.iter().map(|b| self.job(b)).collect::<Result<_, _>>()?;
        Response::ok(ListBuildsResponse {
            builds,
            next_page_token: next,
            total_count: total as i32,
            ..Default::default()
        })
    }

    async fn cancel_build(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CancelBuildRequest>,
    ) -> ServiceResult<CancelBuildResponse> {
        let tenant = self.caller(ctx.headers())?;
        let b = self.owned(&tenant, request.build_id)?;
        if b.state.is_terminal() {
            return Response::ok(CancelBuildResponse {
                success: false,
                state: EnumValue::from(b.state.proto()),
                ..Default::default()
            });
        }
        let state = self.cancel(&b).await?;
        Response::ok(CancelBuildResponse {
            success: state == State::Cancelled,
            state: EnumValue::from(state.proto()),
            ..Default::default()
        })
    }

    async fn delete_build(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, DeleteBuildRequest>,
    ) -> ServiceResult<DeleteBuildResponse> {
        let tenant = self.caller(ctx.headers())?;
        let b = self.owned(&tenant, request.build_id)?;
        if !b.state.is_terminal() {
            if !request.force {
                return Err(ConnectError::failed_precondition(format!(
                    "build {} is {}: cancel it first, or delete with force",
                    b.id,
                    b.state.name()
                )));
            }
            let state = self.cancel(&b).await?;
            if !state.is_terminal() {
                return Err(ConnectError::unavailable(
                    "the build did not stop in time; try again",
                ));
            }
        }
        let dir = self.runner.artifact_dir(&b.tenant_id, &b.id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ConnectError::internal(format!(
                    "deleting the artifact: {e}"
                )))
            }
        }
        self.store.delete_build(&b.id).map_err(internal)?;
        Response::ok(DeleteBuildResponse {
            success: true,
            ..Default::default()
        })
    }

    async fn stream_build_logs(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StreamBuildLogsRequest>,
    ) -> ServiceResult<ServiceStream<StreamBuildLogsResponse>> {
        let tenant = self.caller(ctx.headers())?;
        let b = self.owned(&tenant, request.build_id)?;
        let follow = request.follow;
        let store = self.store.clone();
        let id = b.id.clone();
        // A followed stream is held open as long as the build runs: each
        // tenant may hold a few at once.
        let held = if follow {
            Some(self.followers.hold(&tenant.id).ok_or_else(|| {
                ConnectError::resource_exhausted(format!(
                    "tenant {:?} follows {MAX_FOLLOWED} log streams already; close one first",
                    tenant.id
                ))
            })?)
        } else {
            None
        };
        let bell = store.bells.bell(&id);
        // Pages of lines: the stored ones, then (with follow) new ones as
        // they come, until the build has ended and all its lines are sent.
        let pages = futures::stream::unfold(Some(0i64), move |after| {
            let store = store.clone();
            let id = id.clone();
            let bell = bell.clone();
            let _held = &held;
            async move {
                let after = after?;
                loop {
                    // Listening before reading: a line written in between
                    // still wakes this stream.
                    let rung = bell.notified();
                    tokio::pin!(rung);
                    rung.as_mut().enable();
                    // Read the state before the lines, so no line written
                    // before the end is missed.
                    let finished = store
                        .state(&id)
                        .ok()
                        .flatten()
                        .is_none_or(State::is_terminal);
                    let lines = match store.logs_after(&id, after) {
                        Ok(l) => l,
                        Err(e) => return Some((vec![Err(internal(e))], None)),
                    };
                    if let Some(last) = lines.last() {
                        let next = last.seq;
                        let page = lines
                            .into_iter()
                            .map(|l| {
                                Ok(StreamBuildLogsResponse {
                                    timestamp: timestamp(l.at_ms),
                                    level: l.level,
                                    message: l.message,
                                    component: l.component,
                                    sequence: l.seq,
                                    ..Default::default()
                                })
                            })
                            .collect();
                        return Some((page, Some(next)));
                    }
                    if !follow || finished {
                        return None;
                    }
                    rung.await;
                }
            }
        });
        let lines = pages.flat_map(futures::stream::iter);
        Response::ok(Box::pin(lines) as ServiceStream<_>)
    }

    async fn get_tenant_quotas(
        &self,
        ctx: RequestContext,
        _request: ServiceRequest<'_, GetTenantQuotasRequest>,
    ) -> ServiceResult<GetTenantQuotasResponse> {
        let tenant = self.caller(ctx.headers())?;
        let l = tenant.tier.limits();
        let u = self.store.usage(&tenant.id).map_err(internal)?;
        Response::ok(GetTenantQuotasResponse {
            tenant_id: tenant.id.clone(),
            tier: EnumValue::from(tenant.tier.proto()),
            limits: MessageField::some(TenantLimits {
                concurrent_builds: l.concurrent_builds as i32,
                daily_builds: l.daily_builds as i32,
                build_timeout_seconds: l.build_timeout.as_secs() as i64,
                storage_bytes: l.storage_bytes as i64,
                ..Default::default()
            }),
            usage: MessageField::some(TenantUsage {
                running_builds: u.running as i32,
                queued_builds: u.queued as i32,
                builds_today: u.created_today as i32,
                storage_bytes: u.storage_bytes,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn get_build_stats(
        &self,
        ctx: RequestContext,
        _request: ServiceRequest<'_, GetBuildStatsRequest>,
    ) -> ServiceResult<GetBuildStatsResponse> {
        let tenant = self.caller(ctx.headers())?;
        let s = self.store.stats(&tenant.id).map_err(internal)?;
        Response::ok(GetBuildStatsResponse {
            total_builds: s.total,
            completed_builds: s.completed,
            failed_builds: s.failed,
            cancelled_builds: s.cancelled,
            timed_out_builds: s.timed_out,
            active_builds: s.active,
            average_build_ms: s.average_ms,
            artifact_bytes: s.artifact_bytes,
            ..Default::default()
        })
    }

    async fn upload_archive(
        &self,
        ctx: RequestContext,
        requests: InboundStream<UploadArchiveRequest>,
    ) -> ServiceResult<UploadArchiveResponse> {
        let tenant = self.caller(ctx.headers())?;
        let chunks = requests.map(|message| {
            message
                .map(|m| bytes::Bytes::copy_from_slice(m.view().data))
                .map_err(|e| e.to_string())
        });
        let upload =
            crate::upload::receive(&self.store, &self.uploads, &tenant, None, Box::pin(chunks))
                .await?;
        Response::ok(upload_answer(&upload))
    }
}
