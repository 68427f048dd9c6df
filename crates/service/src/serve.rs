//! `builderd serve`: opens the data directory, puts back what a crash
//! interrupted, and serves until SIGTERM or SIGINT; then stops accepting,
//! lets running builds finish for a grace period and requeues the rest.
//!
//! The data directory holds `builderd.db` (SQLite), `operator.key` (mode
//! 0600), `blobs/` (the layer cache shared by all builds), `work/` (one
//! directory per running build) and `artifacts/TENANT/BUILD/`.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::api::Api;
use crate::auth;
use crate::cache::Cache;
use crate::runner::Runner;
use crate::scheduler::Scheduler;
use crate::state::State;
use crate::store::{CacheEntry, KeyInfo, Store, Webhook};
use crate::tier::Tier;

pub struct Options {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The `builderd` binary that runs each build.
    pub exe: PathBuf,
    /// Builds running at once, over all tenants.
    pub workers: usize,
    pub trust_tenant_header: bool,
    /// How long running builds may go on after SIGTERM before they are requeued.
    pub shutdown_grace: Duration,
    pub insecure_registries: Vec<String>,
    /// The operator's hardening policy file, checked at start.
    pub hardening_policy: Option<PathBuf>,
    /// An upper bound on any build's time, below the tier's limit if smaller.
    pub max_build_time: Option<Duration>,
    /// The retry policy of builds whose config has none.
    pub retry_defaults: builderd_oci::RetryPolicy,
    /// The bound on the blob and artifact caches together.
    pub cache_max_bytes: u64,
    /// Webhooks may go to loopback and private addresses.
    pub allow_private_webhooks: bool,
    /// Builds may pull from loopback, private and link-local registries.
    pub allow_private_registries: bool,
    /// What Git sources may reach.
    pub git: crate::runner::GitPolicy,
    /// Serve `/metrics` here instead of on the API's address.
    pub metrics_listen: Option<SocketAddr>,
    /// Delete the artifacts and logs of builds finished longer ago.
    pub retention: Option<Duration>,
    /// How long an upload no build names is kept.
    pub upload_lifetime: Duration,
    /// Archive URLs may name loopback and private addresses.
    pub allow_private_archive_urls: bool,
    /// The largest upload, whatever the tier's room.
    pub max_upload_bytes: u64,
    /// Export traces to this OTLP/HTTP collector.
    pub otlp_endpoint: Option<String>,
    /// Connections and request heads: what a client may hold.
    pub limits: crate::front::Limits,
    /// An upper bound on any build's memory, below the tier's if smaller.
    pub max_build_memory: Option<u64>,
    /// What builds' steps reach, for every tier; None: by the tier.
    pub steps_network: Option<builderd_build::StepNetwork>,
}

/// `${XDG_DATA_HOME:-~/.local/share}/builderd`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("builderd")
}

fn open_store(data_dir: &Path) -> Result<Store> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("{}: cannot create the data directory", data_dir.display()))?;
    Store::open(&data_dir.join("builderd.db"))
        .with_context(|| format!("{}: cannot open the database", data_dir.display()))
}

/// `builderd tenant create`: a new tenant and its first API key (returned;
/// only its hash is stored). Safe while a server runs on the same directory.
pub fn create_tenant(data_dir: &Path, name: &str, tier: Tier) -> Result<String> {
    if !auth::valid_tenant_id(name) {
        anyhow::bail!(
            "{name:?}: a tenant name is 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        );
    }
    let store = open_store(data_dir)?;
    let key = auth::new_key();
    store.create_tenant(name, tier, &auth::hash(&key))?;
    Ok(key)
}

/// `builderd tenant keys`: the tenant's keys, by id (a prefix of each
/// key's hash) and creation time.
pub fn tenant_keys(data_dir: &Path, name: &str) -> Result<Vec<KeyInfo>> {
    let store = open_store(data_dir)?;
    if store.tenant(name)?.is_none() {
        anyhow::bail!("no tenant {name:?} in {}", data_dir.display());
    }
    Ok(store.tenant_keys(name)?)
}

/// `builderd tenant add-key` / `rotate-key`: a new key for the tenant
/// (returned); with `revoke_others` (rotate), its other keys stop working
/// at once, also for a running server.
pub fn new_tenant_key(data_dir: &Path, name: &str, revoke_others: bool) -> Result<String> {
    let store = open_store(data_dir)?;
    let key = auth::new_key();
    store.add_tenant_key(name, &auth::hash(&key), revoke_others)?;
    Ok(key)
}

/// `builderd tenant revoke-key`: the key named `id` stops working at once.
pub fn revoke_tenant_key(data_dir: &Path, name: &str, id: &str) -> Result<()> {
    Ok(open_store(data_dir)?.revoke_tenant_key(name, id)?)
}

/// `builderd operator rotate-key`: a new operator key in `operator.key`;
/// the old one stops working at once, also for a running server.
pub fn rotate_operator_key(data_dir: &Path) -> Result<PathBuf> {
    let store = open_store(data_dir)?;
    let path = data_dir.join("operator.key");
    let key = auth::new_key();
    let mut tmp = tempfile::Builder::new()
        .prefix(".operator.key.")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(data_dir)?;
    std::io::Write::write_all(&mut tmp, format!("{key}\n").as_bytes())?;
    tmp.as_file().sync_all()?;
    // The file first: a crash between the two leaves the new key in the
    // file, which the next start makes the one valid key.
    tmp.persist(&path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    store.set_operator_key(&auth::hash(&key))?;
    Ok(path)
}

/// `builderd tenant webhook`: a tenant's webhook and signing secret, after
/// `update` (a new webhook; an empty URL removes it) and, with `rotate`, a
/// new secret. Safe while a server runs on the same directory.
pub fn tenant_webhook(
    data_dir: &Path,
    name: &str,
    update: Option<Webhook>,
    rotate: bool,
) -> Result<(Webhook, String)> {
    let store = open_store(data_dir)?;
    if let Some(w) = &update {
        crate::job::check_webhook(&w.url, &w.events, w.headers.iter().map(|(k, _)| k.as_str()))
            .map_err(|e| anyhow::anyhow!(e.replace("config.webhook", "the webhook")))?;
    }
    if update.is_some() || rotate {
        let w = match update {
            Some(w) => w,
            None => store.tenant_webhook(name)?.0,
        };
        store.set_tenant_webhook(name, &w, rotate)?;
    }
    Ok(store.tenant_webhook(name)?)
}

/// `builderd cache ls`: what the service's caches hold, least recently used
/// first.
pub fn cache_list(data_dir: &Path) -> Result<Vec<CacheEntry>> {
    let store = open_store(data_dir)?;
    Cache::open(data_dir, None, 0)?.adopt(&store)?;
    Ok(store.cache_entries()?)
}

/// `builderd cache prune`: evicts what no running build uses, least
/// recently used first, until the caches hold at most `max_bytes`. Safe
/// while a server runs on the same directory.
pub fn cache_prune(data_dir: &Path, max_bytes: u64) -> Result<Vec<CacheEntry>> {
    let store = open_store(data_dir)?;
    let cache = Cache::open(data_dir, None, max_bytes)?;
    cache.adopt(&store)?;
    Ok(cache.evict(&store, None)?)
}

/// The operator key: made on first start, then read from the data directory.
fn operator_key(data_dir: &Path, store: &Store) -> Result<PathBuf> {
    let path = data_dir.join("operator.key");
    let key = match std::fs::read_to_string(&path) {
        Ok(k) => k.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = auth::new_key();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("{}: cannot create", path.display()))?;
            std::io::Write::write_all(&mut f, format!("{key}\n").as_bytes())?;
            f.sync_all()?;
            key
        }
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    // The key in the file is the one operator key: one made before it (a
    // deleted or replaced file) no longer works.
    store.set_operator_key(&auth::hash(&key))?;
    Ok(path)
}

/// Removes what a crash left behind: work directories (no build runs yet)
/// and artifact directories of builds that did not complete.
fn clean_leftovers(data_dir: &Path, store: &Store) -> Result<()> {
    let work = data_dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work).context("removing old work directories")?;
    }
    let artifacts = data_dir.join("artifacts");
    for tenant in std::fs::read_dir(&artifacts)
        .into_iter()
        .flatten()
        .flatten()
    {
        for build in std::fs::read_dir(tenant.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = build.file_name().to_string_lossy().into_owned();
            let keep = store.state(&id)? == Some(State::Completed);
            if !keep {
                std::fs::remove_dir_all(build.path())?;
            }
        }
    }
    Ok(())
}

/// The data directory's server lock: held (flock) for as long as the server
/// runs, released by the kernel when it exits or crashes. The file says who
/// holds it.
struct ServerLock {
    _file: std::fs::File,
}

/// Takes the data directory for this server, or says which process has it:
/// two servers on one directory would each run the other's builds.
fn lock_data_dir(data_dir: &Path, listen: SocketAddr) -> Result<ServerLock> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::io::AsRawFd;
    let path = data_dir.join("server.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        anyhow::bail!(
            "{} is in use by another builderd serve ({}); stop that one first, or give this one another --data-dir",
            data_dir.display(),
            if holder.is_empty() { "its process id is not known yet" } else { holder }
        );
    }
    file.set_len(0)?;
    file.seek(std::io::SeekFrom::Start(0))?;
    write!(file, "pid {}, listening on {listen}", std::process::id())?;
    file.flush()?;
    Ok(ServerLock { _file: file })
}

pub async fn serve(opts: Options) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.data_dir)
        .with_context(|| {
            format!(
                "{}: cannot create the data directory",
                opts.data_dir.display()
            )
        })?;
    let _lock = lock_data_dir(&opts.data_dir, opts.listen)?;
    let store = Arc::new(open_store(&opts.data_dir)?);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    {
        let metrics = metrics.clone();
        store.observe(move |t| metrics.observe(t));
    }
    let mut traces = None;
    if let Some(endpoint) = opts.otlp_endpoint.clone() {
        let t = tokio::task::spawn_blocking(move || crate::traces::Traces::new(&endpoint))
            .await?
            .context("setting up the OTLP trace exporter")?;
        let t = Arc::new(t);
        crate::traces::observe(t.clone(), &store);
        traces = Some(t);
    }
    let key_path = operator_key(&opts.data_dir, &store)?;
    let (requeued, failed) = store.recover_interrupted()?;
    for id in &requeued {
        let _ = store.log(
            id,
            "warn",
            "interrupted by a server restart: queued again",
            "builderd",
        );
    }
    if !requeued.is_empty() || !failed.is_empty() {
        tracing::warn!(
            requeued = requeued.len(),
            failed = failed.len(),
            "after a restart: interrupted builds queued again, or failed when interrupted too often"
        );
    }
    clean_leftovers(&opts.data_dir, &store)?;
    crate::paths::DataDir(opts.data_dir.clone())
        .set_modes()
        .with_context(|| format!("{}: setting its modes", opts.data_dir.display()))?;
    let mut cache = Cache::open(&opts.data_dir, Some(&opts.exe), opts.cache_max_bytes)
        .context("opening the cache")?;
    // Builds read the policy as it was at start (what the cache's keys
    // name), not the operator's file as it may change.
    let hardening_policy = match &opts.hardening_policy {
        Some(policy) => {
            let text = std::fs::read(policy)
                .with_context(|| format!("--hardening-policy {}", policy.display()))?;
            cache.also_made_by(&text);
            let kept = opts.data_dir.join("hardening-policy.json");
            std::fs::write(&kept, &text)
                .with_context(|| format!("{}: cannot write it", kept.display()))?;
            Some(kept)
        }
        None => None,
    };
    let cache = Arc::new(cache);
    // No build runs yet: what the steps of builds killed with an earlier
    // server still run goes, and no blob is in use.
    builderd_build::sweep_steps();
    store.clear_leases()?;
    cache.adopt(&store).context("reading the cache")?;
    let evicted = cache.evict(&store, None)?;
    if !evicted.is_empty() {
        tracing::info!(entries = evicted.len(), "cache over its bound: evicted");
    }
    let confinement = Arc::new(crate::confine::Confinement::open());
    tracing::info!(confinement = %confinement.describe(), "builds run confined");
    let runner = Arc::new(Runner {
        metrics: metrics.clone(),
        confinement: confinement.clone(),
        max_build_memory: opts.max_build_memory,
        steps_network: opts.steps_network,
        exe: opts.exe.clone(),
        artifacts: crate::artifact::Artifacts {
            dirs: crate::paths::DataDir(opts.data_dir.clone()),
            cache,
        },
        insecure_registries: opts.insecure_registries.clone(),
        hardening_policy,
        allow_private_registries: opts.allow_private_registries,
        retry_defaults: opts.retry_defaults.clone(),
        git: opts.git.clone(),
        allow_private_archive_urls: opts.allow_private_archive_urls,
        sealer: Arc::new(
            crate::sealed::Sealer::open_or_create(&opts.data_dir.join("secrets.key"))
                .context("the data directory's secrets.key")?,
        ),
    });
    let scheduler = Scheduler::new(
        store.clone(),
        runner.clone(),
        opts.workers,
        opts.max_build_time,
    );
    tokio::spawn(scheduler.clone().run());
    if let Some(age) = opts.retention {
        let retention = crate::retention::Retention {
            store: store.clone(),
            artifacts: opts.data_dir.join("artifacts"),
            age,
        };
        tokio::spawn(retention.run());
    }
    let deliverer = crate::webhook::Deliverer::new(
        store.clone(),
        metrics.clone(),
        opts.allow_private_webhooks,
    )?;
    tokio::spawn(deliverer.run());
    let api = Arc::new(Api {
        store: store.clone(),
        metrics: metrics.clone(),
        followers: Default::default(),
        scheduler: scheduler.clone(),
        runner,
        trust_tenant_header: opts.trust_tenant_header,
        allow_private_webhooks: opts.allow_private_webhooks,
        uploads: crate::upload_rules::Uploads {
            dir: crate::paths::DataDir(opts.data_dir.clone()).uploads(),
            lifetime: opts.upload_lifetime,
            max_bytes: opts.max_upload_bytes,
            in_flight: Default::default(),
        },
    });
    match crate::upload::sweep_leftovers(&api.store, &api.uploads)
        .context("deleting unfinished uploads")?
    {
        0 => {}
        n => tracing::info!(files = n, "unfinished uploads deleted"),
    }
    tokio::spawn(crate::upload::sweep(api.store.clone(), api.uploads.clone()));
    let listener =
        listen(opts.listen).with_context(|| format!("cannot listen on {}", opts.listen))?;
    tracing::info!(
        url = %format!("http://{}", listener.local_addr()?),
        data_dir = %opts.data_dir.display(),
        operator_key = %key_path.display(),
        "serving builder.v1"
    );
    let mut metrics_listener = None;
    if let Some(addr) = opts.metrics_listen {
        let metrics =
            listen(addr).with_context(|| format!("cannot listen on {addr} for the metrics"))?;
        tracing::info!(url = %format!("http://{}/metrics", metrics.local_addr()?), "serving metrics");
        metrics_listener = Some(metrics);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(metrics) = metrics_listener {
        let routes = crate::http::metrics_router(api.clone());
        tokio::spawn(crate::front::serve(
            metrics,
            routes,
            opts.limits,
            stop_rx.clone(),
            Duration::ZERO,
        ));
    }
    let with_metrics = opts.metrics_listen.is_none();
    let (routes, health) = crate::http::router(api, with_metrics);
    // Followed log streams would keep connections open for ever: a second
    // is what requests under way get once the builds are settled.
    let server = tokio::spawn(crate::front::serve(
        listener,
        routes,
        opts.limits,
        stop_rx.clone(),
        Duration::from_secs(1),
    ));
    let signal = shutdown_signal().await;
    tracing::info!(
        signal,
        grace_s = opts.shutdown_grace.as_secs(),
        "shutting down: no new connections; running builds have the grace period to finish"
    );
    health.shutdown();
    let _ = stop_tx.send(true);
    scheduler.shutdown(opts.shutdown_grace).await;
    if tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .is_err()
    {
        tracing::info!("closing the connections still open");
    }
    tokio::task::spawn_blocking(move || {
        if let Some(t) = traces {
            t.shutdown();
        }
    })
    .await?;
    confinement.close();
    tracing::info!("stopped");
    Ok(())
}

/// Connections the kernel holds for us before we accept them. The default
/// (128) overflows when a burst of clients connects at once, and each
/// connection dropped then waits a whole second for its SYN to be resent.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
