//! From a BuildConfig to the job a worker runs: every field is either carried
//! out, refused as not implemented yet (naming it), or refused as invalid.
//! A field left at its default asks for nothing and is accepted.

use std::collections::BTreeMap;
use std::time::Duration;

use builderd_oci::{Backoff, RetryCause, RetryPolicy};

use crate::proto::builder::v1::{
    build_source::SourceType, build_strategy::StrategyType, build_target::TargetType, BuildConfig,
    GitAuth, InitStrategy,
};
use crate::sealed::{BuildSecrets, GitSecret};

/// Why a config cannot be run.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A real option builderd does not carry out yet.
    Unimplemented(String),
    /// A value that means nothing.
    Invalid(String),
}

impl From<Refusal> for connectrpc::ConnectError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unimplemented(m) => connectrpc::ConnectError::unimplemented(m),
            Refusal::Invalid(m) => connectrpc::ConnectError::invalid_argument(m),
        }
    }
}

/// One build, as `builderd build` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Job {
    pub image: String,
    pub platform: Option<String>,
    pub init: &'static str,
    pub init_script: Option<String>,
    pub compression: Option<&'static str>,
    pub size_limit: Option<u64>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// The docker strategy's `custom_commands`: run in the image, in order,
    /// before it is written.
    pub commands: Vec<String>,
    /// What their network reaches: the runner sets it from the tenant's
    /// tier and the operator's policy.
    pub step_network: builderd_build::StepNetwork,
    /// The build's retry policy: its registry requests are retried by it
    /// (NETWORK_ERROR, REGISTRY_RATE_LIMIT), the whole build is run again for
    /// a TEMPORARY_RESOURCE_ERROR, and `max_retries` also bounds how many
    /// server restarts may interrupt it.
    pub retry: RetryPolicy,
    /// What it is built from: "docker_image", "git_repository" or
    /// "archive".
    pub source_type: &'static str,
    /// How a Git source is built (None for an image).
    pub project: Option<GitJob>,
    /// An archive source: `image` is `upload://ID`.
    pub archive: Option<ArchiveJob>,
    /// The docker strategy's `optimize_for_size`.
    pub optimize_for_size: bool,
    /// The docker strategy's `remove_dev_packages`.
    pub remove_dev_packages: bool,
    /// The strategy's `harden` set to false.
    pub no_harden: bool,
    /// Keep the image's layers as disks of their own (preserve_layers).
    pub preserve_layers: bool,
}

/// A Git source's build: `Job::image` is its address as `builderd build`
/// takes it (`git+https://HOST/PATH#REF`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GitJob {
    pub dockerfile: Option<String>,
    pub context: Option<String>,
    /// In key order (a proto map has none of its own).
    pub build_args: Vec<(String, String)>,
    /// The ids of its build secrets (their values are sealed apart).
    pub secret_ids: Vec<String>,
    pub build_system: builderd_build::BuildSystem,
    /// The tenant's layer cache and package caches are used.
    pub cache_dependencies: bool,
}

/// An archive source and its strategy (`archive_strategy`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchiveJob {
    /// The upload's id, or else
    pub upload: Option<String>,
    /// the URL it is fetched from (with its `#sha256=` pin, if any).
    pub url: Option<String>,
    pub archive_type: Option<String>,
    pub build_context: Option<String>,
    pub build_script: Option<String>,
    pub runtime: Option<String>,
    pub version: Option<String>,
    pub dependencies: Vec<String>,
    pub output_path: Option<String>,
}

/// The server's retry policy for builds whose config has none (or leaves
/// fields out).
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        backoff: Backoff::Exponential,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(30),
        retry_on: RetryCause::ALL.to_vec(),
    }
}

fn unimplemented(field: &str, what: &str) -> Refusal {
    Refusal::Unimplemented(format!("{field}: {what} is not implemented yet"))
}

/// The job `config` asks for; what its retry policy leaves out comes from
/// `retry_defaults`.
pub fn job(config: &BuildConfig, retry_defaults: &RetryPolicy) -> Result<Job, Refusal> {
    let mut job = Job {
        retry: retry_defaults.clone(),
        init: "direct-exec",
        source_type: "docker_image",
        ..Job::default()
    };
    match config
        .source
        .as_option()
        .and_then(|s| s.source_type.as_ref())
    {
        None => {
            return Err(Refusal::Invalid(
                "config.source: name the source (docker_image with an image_uri)".into(),
            ))
        }
        Some(SourceType::GitRepository(g)) => git_source(g, &mut job)?,
        Some(SourceType::Archive(a)) => archive_source(a, &mut job)?,
        Some(SourceType::DockerImage(d)) => {
            if d.image_uri.trim().is_empty() {
                return Err(Refusal::Invalid(
                    "config.source.docker_image.image_uri: empty; give an image reference such as alpine:3.20".into(),
                ));
            }
            // Only registries: the other transports (oci:, docker-archive:)
            // and project sources (dir:, git:) would read the server's own
            // files.
            let project = builderd_build::Project::parse(&d.image_uri).is_some()
                || builderd_build::archive_source_file(&d.image_uri).is_some();
            match builderd_oci::Source::parse(&d.image_uri) {
                Ok(builderd_oci::Source::Registry(_)) if !project => {}
                Ok(_) => {
                    return Err(Refusal::Invalid(format!(
                        "config.source.docker_image.image_uri: {:?} is not a registry reference; the service pulls from registries only",
                        d.image_uri
                    )))
                }
                Err(e) => {
                    return Err(Refusal::Invalid(format!(
                        "config.source.docker_image.image_uri: {e}"
                    )))
                }
            }
            job.image = d.image_uri.clone();
            if !d.platform.is_empty() {
                builderd_oci::Platform::parse(&d.platform).map_err(|e| {
                    Refusal::Invalid(format!("config.source.docker_image.platform: {e}"))
                })?;
                job.platform = Some(d.platform.clone());
            }
        }
    }

    if let Some(TargetType::MicrovmRootfs(t)) = config
        .target
        .as_option()
        .and_then(|t| t.target_type.as_ref())
    {
        match t.format.as_str() {
            "" | "ext4" => {}
            other => {
                return Err(Refusal::Invalid(format!(
                    "config.target.microvm_rootfs.format: {other:?} is not a format builderd writes; use \"ext4\""
                )))
            }
        }
        let strategy = t.init_strategy.as_known().ok_or_else(|| {
            Refusal::Invalid(format!(
                "config.target.microvm_rootfs.init_strategy: unknown value {}",
                t.init_strategy.to_i32()
            ))
        })?;
        job.init = match strategy {
            InitStrategy::INIT_STRATEGY_UNSPECIFIED | InitStrategy::INIT_STRATEGY_DIRECT_EXEC => {
                "direct-exec"
            }
            InitStrategy::INIT_STRATEGY_SYSTEMD => "systemd",
            InitStrategy::INIT_STRATEGY_CUSTOM => "custom",
        };
        match (job.init, t.custom_init_script.is_empty()) {
            ("custom", true) => {
                return Err(Refusal::Invalid(
                    "config.target.microvm_rootfs.custom_init_script: INIT_STRATEGY_CUSTOM needs the script".into(),
                ))
            }
            ("custom", false) => job.init_script = Some(t.custom_init_script.clone()),
            (_, false) => {
                return Err(Refusal::Invalid(
                    "config.target.microvm_rootfs.custom_init_script: only for INIT_STRATEGY_CUSTOM"
                        .into(),
                ))
            }
            _ => {}
        }
        job.compression = match t.compression.as_str() {
            "" | "none" => None,
            "gzip" => Some("gzip"),
            "zstd" => Some("zstd"),
            other => {
                return Err(Refusal::Invalid(format!(
                    "config.target.microvm_rootfs.compression: {other:?}; use gzip, zstd or none"
                )))
            }
        };
        job.size_limit = match t.size_limit_bytes {
            0 => None,
            n if n < 0 => {
                return Err(Refusal::Invalid(format!(
                    "config.target.microvm_rootfs.size_limit_bytes: {n} is negative"
                )))
            }
            n => Some(n as u64),
        };
        if let Some(r) = t.runtime_config.as_option() {
            let some = |s: &String| (!s.is_empty()).then(|| s.clone());
            job.entrypoint = (!r.entrypoint.is_empty()).then(|| r.entrypoint.clone());
            job.cmd = (!r.cmd.is_empty()).then(|| r.cmd.clone());
            job.env = r.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if let Some(bad) = job.env.keys().find(|k| k.is_empty() || k.contains('=')) {
                return Err(Refusal::Invalid(format!(
                    "config.target.microvm_rootfs.runtime_config.env: {bad:?} is not a variable name"
                )));
            }
            job.working_dir = some(&r.working_dir);
            job.user = some(&r.user);
            job.hostname = some(&r.hostname);
        }
    }

    match config
        .strategy
        .as_option()
        .and_then(|s| s.strategy_type.as_ref())
    {
        None => {}
        Some(StrategyType::DockerStrategy(_)) if job.project.is_some() => {
            return Err(unimplemented(
                "config.strategy.docker_strategy",
                "the docker strategy for a git_repository source",
            ))
        }
        Some(StrategyType::DockerStrategy(_)) if job.archive.is_some() => {
            return Err(unimplemented(
                "config.strategy.docker_strategy",
                "the docker strategy for an archive source",
            ))
        }
        Some(StrategyType::DockerStrategy(d)) => {
            let field = "config.strategy.docker_strategy";
            job.optimize_for_size = d.optimize_for_size;
            job.remove_dev_packages = d.remove_dev_packages;
            job.no_harden = d.harden == Some(false);
            job.preserve_layers = d.preserve_layers;
            job.commands = commands(&format!("{field}.custom_commands"), &d.custom_commands)?;
        }
        Some(StrategyType::GitStrategy(g)) => git_strategy(g, &mut job)?,
        Some(StrategyType::ArchiveStrategy(a)) => archive_strategy(a, &mut job)?,
    }

    if let Some(r) = config.retry_policy.as_option() {
        job.retry = retry_policy(r, retry_defaults)?;
    }
    if let Some(w) = config.webhook.as_option() {
        check_webhook(&w.url, &w.events, w.headers.keys().map(String::as_str))
            .map_err(Refusal::Invalid)?;
    }
    Ok(job)
}

/// An `archive` source: an upload of the tenant's (`upload://ID`; whether
/// it is the caller's is checked at CreateBuild), what it is said to be,
/// the directory of it to build.
fn archive_source(
    a: &crate::proto::builder::v1::ArchiveSource,
    job: &mut Job,
) -> Result<(), Refusal> {
    let field = "config.source.archive";
    let url = a.archive_url.trim();
    let (upload, fetched) = match url.strip_prefix("upload://") {
        Some(id) if crate::upload_rules::is_id(id) => (Some(id.to_string()), None),
        Some(_) => {
            return Err(Refusal::Invalid(format!(
                "{field}.archive_url: {url:?} is not an upload's id (UploadArchive answers one)"
            )))
        }
        None if (url.starts_with("https://") || plain_http_to_loopback(url))
            && url.len() <= 4096
            && !url.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            (None, Some(url.to_string()))
        }
        None => {
            return Err(Refusal::Invalid(format!(
                "{field}.archive_url: give upload://ID (UploadArchive answers the id) or an \
                 https:// URL (#sha256=HEX pins its content)"
            )))
        }
    };
    let archive_type = match a.archive_type.trim() {
        "" => None,
        t => {
            builderd_archive::Format::parse(t)
                .map_err(|e| Refusal::Invalid(format!("{field}.archive_type: {e}")))?;
            Some(t.to_string())
        }
    };
    let build_context = match a.build_context.trim() {
        "" | "." => None,
        c if relative_path(c) => Some(c.to_string()),
        c => {
            return Err(Refusal::Invalid(format!(
                "{field}.build_context: {c:?}: give a directory of the archive, relative to its top"
            )))
        }
    };
    job.image = url.to_string();
    job.source_type = "archive";
    job.archive = Some(ArchiveJob {
        upload,
        url: fetched,
        archive_type,
        build_context,
        ..ArchiveJob::default()
    });
    Ok(())
}

/// The archive strategy's fields (checked again, against the archive's
/// files, when the build runs).
fn archive_strategy(
    a: &crate::proto::builder::v1::ArchiveBuildStrategy,
    job: &mut Job,
) -> Result<(), Refusal> {
    let field = "config.strategy.archive_strategy";
    let Some(archive) = job.archive.as_mut() else {
        return Err(Refusal::Invalid(format!(
            "{field}: only for an archive source"
        )));
    };
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    archive.build_script = some(&a.build_script);
    archive.runtime = some(&a.runtime);
    archive.version = some(&a.version);
    archive.output_path = some(&a.output_path);
    archive.dependencies = a
        .dependencies
        .iter()
        .map(|d| d.trim().to_string())
        .collect();
    if archive.dependencies.iter().any(|d| !relative_path(d)) {
        return Err(Refusal::Invalid(format!(
            "{field}.dependencies: give files of the archive, relative to its top"
        )));
    }
    Ok(())
}

/// `http://` to a loopback address: the only plain http an archive URL may
/// use (and only where the operator allows private addresses).
fn plain_http_to_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '#', '?']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A plain relative path: no `..`, no leading `/`, printable.
fn relative_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.starts_with('/')
        && !p.chars().any(char::is_control)
        && p.split('/').all(|part| part != "..")
}

/// A `git_repository` source: its address as `builderd build` takes it
/// (no credentials in it: they come from `auth`, sealed apart), its ref,
/// what to build with.
fn git_source(
    g: &crate::proto::builder::v1::GitRepositorySource,
    job: &mut Job,
) -> Result<(), Refusal> {
    let field = "config.source.git_repository";
    let url = g.clone_url.trim();
    let address = if let Some(rest) = ["https://", "http://", "ssh://"]
        .iter()
        .find(|p| url.starts_with(*p))
        .map(|_| url)
    {
        format!("git+{rest}")
    } else if url.starts_with("git://") || url.starts_with("git+") {
        url.to_string()
    } else {
        return Err(Refusal::Invalid(format!(
            "{field}.clone_url: {:?}: give https://HOST/PATH, ssh://USER@HOST/PATH, or http:// or \
             git:// for hosts the operator allows",
            builderd_build::redact_url(url)
        )));
    };
    let source = match g.r#ref.as_str() {
        "" => address,
        r => format!("{address}#{r}"),
    };
    match builderd_build::Project::parse(&source) {
        Some(Ok(builderd_build::Project::Git {
            origin: builderd_build::Origin::Remote(_),
            ..
        })) => {}
        Some(Err(e)) => {
            let which = if e.to_string().contains("Git ref") {
                "ref"
            } else {
                "clone_url"
            };
            return Err(Refusal::Invalid(format!("{field}.{which}: {e}")));
        }
        _ => {
            return Err(Refusal::Invalid(format!(
                "{field}.clone_url: {:?} is not a repository address",
                builderd_build::redact_url(url)
            )))
        }
    }
    job.image = source;
    job.source_type = "git_repository";
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    job.project = Some(GitJob {
        dockerfile: some(&g.dockerfile_path),
        context: some(&g.context_path),
        ..GitJob::default()
    });
    Ok(())
}

/// Most build args and secrets, and the longest value of either.
const MAX_BUILD_ARGS: usize = 128;
const MAX_SECRETS: usize = 32;
const MAX_VALUE_BYTES: usize = 64 << 10;

/// The git strategy: what builds the repository, its args and secrets.
fn git_strategy(
    g: &crate::proto::builder::v1::GitBuildStrategy,
    job: &mut Job,
) -> Result<(), Refusal> {
    let field = "config.strategy.git_strategy";
    let Some(project) = job.project.as_mut() else {
        return Err(Refusal::Invalid(format!(
            "{field}: goes with a git_repository source"
        )));
    };
    use builderd_build::BuildSystem;
    project.build_system = match g.build_system.as_str() {
        "" | "auto" => BuildSystem::Auto,
        "docker" => BuildSystem::Docker,
        "buildpack" => BuildSystem::Buildpack,
        "script" => BuildSystem::Script,
        other => {
            return Err(Refusal::Invalid(format!(
                "{field}.build_system: {other:?}; use auto, docker, buildpack or script"
            )))
        }
    };
    project.cache_dependencies = g.cache_dependencies;
    job.no_harden = g.harden == Some(false);
    match (&project.dockerfile, g.dockerfile_path.as_str()) {
        (_, "") => {}
        (Some(given), path) if given != path => {
            return Err(Refusal::Invalid(format!(
                "{field}.dockerfile_path: {path:?}, but the source names {given:?}"
            )))
        }
        (_, path) => project.dockerfile = Some(path.to_string()),
    }
    if g.build_args.len() > MAX_BUILD_ARGS || g.secrets.len() > MAX_SECRETS {
        return Err(Refusal::Invalid(format!(
            "{field}: at most {MAX_BUILD_ARGS} build_args and {MAX_SECRETS} secrets"
        )));
    }
    let mut args: Vec<(String, String)> = g
        .build_args
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    args.sort();
    for (k, v) in &args {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') || v.len() > MAX_VALUE_BYTES
        {
            return Err(Refusal::Invalid(format!(
                "{field}.build_args: {k:?} is not a name with a value of at most {MAX_VALUE_BYTES} bytes"
            )));
        }
    }
    builderd_build::check_build_args(&args)
        .map_err(|e| Refusal::Invalid(format!("{field}.build_args: {e}")))?;
    project.build_args = args;
    for (id, value) in &g.secrets {
        builderd_build::BuildSecret {
            id: id.clone(),
            src: "secret".into(),
        }
        .checked()
        .map_err(|e| Refusal::Invalid(format!("{field}.secrets: {e}")))?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(Refusal::Invalid(format!(
                "{field}.secrets: {id:?} is longer than {MAX_VALUE_BYTES} bytes"
            )));
        }
    }
    project.secret_ids = g.secrets.keys().cloned().collect();
    project.secret_ids.sort();
    Ok(())
}

/// Most commands one build may run, and the longest one: a tenant's
/// commands are stored with the build and sent to the build process.
const MAX_COMMANDS: usize = 64;
const MAX_COMMAND_BYTES: usize = 16 << 10;

/// Commands to run in the image: each one a shell command line.
fn commands(field: &str, given: &[String]) -> Result<Vec<String>, Refusal> {
    if given.len() > MAX_COMMANDS {
        return Err(Refusal::Invalid(format!(
            "{field}: {} commands; at most {MAX_COMMANDS}",
            given.len()
        )));
    }
    for (i, c) in given.iter().enumerate() {
        if c.trim().is_empty() {
            return Err(Refusal::Invalid(format!("{field}[{i}]: empty")));
        }
        if c.len() > MAX_COMMAND_BYTES {
            return Err(Refusal::Invalid(format!(
                "{field}[{i}]: {} bytes; at most {MAX_COMMAND_BYTES}",
                c.len()
            )));
        }
        if c.contains('\0') {
            return Err(Refusal::Invalid(format!("{field}[{i}]: holds a NUL byte")));
        }
    }
    Ok(given.to_vec())
}

/// A webhook's events and headers must mean something; its URL must be
/// one (whether its address may be reached is checked where names resolve).
pub fn check_webhook<'a>(
    url: &str,
    events: &[String],
    headers: impl IntoIterator<Item = &'a str>,
) -> Result<(), String> {
    let field = "config.webhook";
    if url.is_empty() {
        if !events.is_empty() {
            return Err(format!("{field}.url: empty, but events are named"));
        }
        return Ok(());
    }
    if let Some(bad) = events
        .iter()
        .find(|e| !crate::store::EVENTS.contains(&e.as_str()))
    {
        return Err(format!(
            "{field}.events: {bad:?}; use {}",
            crate::store::EVENTS.join(", ")
        ));
    }
    for h in headers {
        let lower = h.to_ascii_lowercase();
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(format!("{field}.headers: {h:?} is not a header name"));
        }
        if lower == "content-type" || lower == "host" || lower.starts_with("x-builderd-") {
            return Err(format!("{field}.headers: {h} is builderd's to set"));
        }
    }
    Ok(())
}

/// A retry policy written as a build config writes it (JSON, the seed's
/// shape), each field left out taken from the built-in default: how
/// `builderd serve --default-retry-policy` is given.
pub fn parse_retry_policy(json: &str) -> Result<RetryPolicy, String> {
    let r: crate::proto::builder::v1::RetryPolicy =
        serde_json::from_str(json).map_err(|e| format!("{json:?}: {e}"))?;
    retry_policy(&r, &default_retry_policy()).map_err(|e| match e {
        Refusal::Invalid(m) | Refusal::Unimplemented(m) => m,
    })
}

/// A config's retry policy, each field left out taken from `defaults`.
fn retry_policy(
    r: &crate::proto::builder::v1::RetryPolicy,
    defaults: &RetryPolicy,
) -> Result<RetryPolicy, Refusal> {
    let field = "config.retry_policy";
    let mut p = defaults.clone();
    p.max_retries = u32::try_from(r.max_retries).map_err(|_| {
        Refusal::Invalid(format!(
            "{field}.max_retries: {} is negative",
            r.max_retries
        ))
    })?;
    if !r.backoff_strategy.is_empty() {
        p.backoff = Backoff::parse(&r.backoff_strategy.to_ascii_lowercase()).ok_or_else(|| {
            Refusal::Invalid(format!(
                "{field}.backoff_strategy: {:?}; use exponential, linear or fixed",
                r.backoff_strategy
            ))
        })?;
    }
    let duration = |name: &str, text: &str, default: Duration| -> Result<Duration, Refusal> {
        if text.is_empty() {
            return Ok(default);
        }
        humantime::parse_duration(text.trim()).map_err(|e| {
            Refusal::Invalid(format!(
                "{field}.{name}: {text:?} is not a duration such as \"30s\" or \"5m\" ({e})"
            ))
        })
    };
    p.base_delay = duration("base_delay", &r.base_delay, p.base_delay)?;
    p.max_delay = duration("max_delay", &r.max_delay, p.max_delay)?;
    if p.max_delay < p.base_delay {
        return Err(Refusal::Invalid(format!(
            "{field}.max_delay ({}) is shorter than base_delay ({})",
            humantime::format_duration(p.max_delay),
            humantime::format_duration(p.base_delay)
        )));
    }
    if !r.retry_on.is_empty() {
        p.retry_on = r
            .retry_on
            .iter()
            .map(|name| {
                RetryCause::parse(name).ok_or_else(|| {
                    Refusal::Invalid(format!(
                        "{field}.retry_on: {name:?}; use NETWORK_ERROR, TEMPORARY_RESOURCE_ERROR or REGISTRY_RATE_LIMIT"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
    }
    p.check()
        .map_err(|e| Refusal::Invalid(format!("{field}.{e}")))?;
    Ok(p)
}

/// The config as it is shown back and stored: registry passwords and Git
/// secrets removed.
pub fn redacted(config: &BuildConfig) -> BuildConfig {
    let mut c = config.clone();
    if let Some(source) = c.source.as_option_mut() {
        match source.source_type.as_mut() {
            Some(SourceType::DockerImage(d)) => {
                if let Some(auth) = d.registry_auth.as_option_mut() {
                    auth.password.clear();
                }
            }
            Some(SourceType::GitRepository(g)) => {
                if let Some(auth) = g.auth.as_option_mut() {
                    auth.token.clear();
                    auth.password.clear();
                    auth.ssh_key.clear();
                }
            }
            _ => {}
        }
    }
    if let Some(StrategyType::GitStrategy(g)) = c
        .strategy
        .as_option_mut()
        .and_then(|s| s.strategy_type.as_mut())
    {
        for value in g.secrets.values_mut() {
            value.clear();
        }
    }
    c
}

/// What a config gives the build that must not be stored or shown in
/// plain text: the registry login (USER:PASS), the Git credentials, the
/// build secrets.
pub fn secrets(config: &BuildConfig) -> Result<BuildSecrets, Refusal> {
    let mut secrets = BuildSecrets::default();
    match config
        .source
        .as_option()
        .and_then(|s| s.source_type.as_ref())
    {
        Some(SourceType::DockerImage(d)) => {
            if let Some(auth) = d.registry_auth.as_option() {
                if !auth.username.is_empty() || !auth.password.is_empty() {
                    secrets.registry = Some(format!("{}:{}", auth.username, auth.password));
                }
            }
        }
        Some(SourceType::GitRepository(g)) => {
            if let Some(a) = g.auth.as_option() {
                secrets.git = git_secret(a, &g.clone_url)?;
            }
        }
        _ => {}
    }
    if let Some(StrategyType::GitStrategy(g)) = config
        .strategy
        .as_option()
        .and_then(|s| s.strategy_type.as_ref())
    {
        secrets.build = g
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    Ok(secrets)
}

/// The one kind of credentials `auth` gives, fit for `clone_url`.
fn git_secret(a: &GitAuth, clone_url: &str) -> Result<Option<GitSecret>, Refusal> {
    let field = "config.source.git_repository.auth";
    let ssh = clone_url.starts_with("ssh://") || clone_url.starts_with("git+ssh://");
    let basic = !a.username.is_empty() || !a.password.is_empty();
    let given = [!a.token.is_empty(), basic, !a.ssh_key.is_empty()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(Refusal::Invalid(format!(
            "{field}: give one of token, username and password, or ssh_key"
        )));
    }
    let secret = if !a.ssh_key.is_empty() {
        GitSecret::SshKey(a.ssh_key.clone())
    } else if !a.token.is_empty() {
        GitSecret::Token(a.token.clone())
    } else if basic {
        if a.username.is_empty() || a.password.is_empty() {
            return Err(Refusal::Invalid(format!(
                "{field}: give both username and password"
            )));
        }
        GitSecret::Basic {
            username: a.username.clone(),
            password: a.password.clone(),
        }
    } else {
        return Ok(None);
    };
    match (&secret, ssh) {
        (GitSecret::SshKey(_), false) => Err(Refusal::Invalid(format!(
            "{field}.ssh_key: the clone_url is not an ssh:// address"
        ))),
        (GitSecret::Token(_) | GitSecret::Basic { .. }, true) => Err(Refusal::Invalid(format!(
            "{field}: an ssh:// address takes an ssh_key"
        ))),
        _ => Ok(Some(secret)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(json: &str) -> BuildConfig {
        let req: crate::proto::builder::v1::CreateBuildRequest =
            serde_json::from_str(json).expect("the config parses");
        req.config.into_option().expect("a config")
    }

    /// The original service's three documented example configs, as written.
    const NODE: &str = r#"{"config": {"source": {"docker_image": {"image_uri": "node:18-alpine"}},
        "target": {"microvm_rootfs": {"format": "ext4", "init_strategy": "INIT_STRATEGY_DIRECT_EXEC"}},
        "strategy": {"docker_strategy": {"optimize_for_size": true, "remove_dev_packages": false,
          "custom_commands": ["npm ci --only=production", "npm cache clean --force"]}}}}"#;
    const WEBAPP: &str = r#"{"config": {"source": {"docker_image": {"image_uri": "ghcr.io/company/webapp:v1.2.3",
          "registry_auth": {"username": "github_user", "password": "ghp_token"}}},
        "target": {"microvm_rootfs": {"format": "ext4", "init_strategy": "INIT_STRATEGY_SYSTEMD",
          "compression": "gzip", "size_limit_bytes": 2147483648}},
        "strategy": {"docker_strategy": {"optimize_for_size": true, "remove_dev_packages": true,
          "preserve_layers": false, "custom_commands": ["apt-get autoremove -y", "apt-get clean",
          "rm -rf /var/lib/apt/lists/*", "rm -rf /tmp/*", "rm -rf /var/tmp/*"]}}}}"#;
    const GIT: &str = r#"{"config": {"source": {"git_repository": {"clone_url": "https://github.com/company/application.git",
          "ref": "main", "auth": {"token": "github_token"}, "dockerfile_path": "Dockerfile.production"}},
        "target": {"microvm_rootfs": {"format": "ext4", "init_strategy": "INIT_STRATEGY_CUSTOM"}},
        "strategy": {"git_strategy": {"build_system": "docker", "build_args": {"ENV": "production",
          "BUILD_VERSION": "{{.GitCommit}}"}, "cache_dependencies": true}}}}"#;

    #[test]
    fn archive_sources_take_an_upload_and_their_strategy() {
        let id = format!("upload_{}", "ab".repeat(16));
        let config = |source: Value, strategy: Value| {
            parse(
                &json!({"config": {"source": {"archive": source}, "strategy": strategy}})
                    .to_string(),
            )
        };
        let taken = job(
            &config(
                json!({"archive_url": format!("upload://{id}"), "archive_type": "tar.xz",
                       "build_context": "apps/web"}),
                json!({"archive_strategy": {"runtime": "node", "version": "18",
                       "build_script": "build.sh", "dependencies": ["package.json"],
                       "output_path": "/srv/app"}}),
            ),
            &default_retry_policy(),
        )
        .unwrap();
        assert_eq!(taken.source_type, "archive");
        assert_eq!(taken.image, format!("upload://{id}"));
        let a = taken.archive.unwrap();
        assert_eq!(
            (
                a.upload.as_deref(),
                a.archive_type.as_deref(),
                a.build_context.as_deref()
            ),
            (Some(id.as_str()), Some("tar.xz"), Some("apps/web"))
        );
        assert_eq!(a.runtime.as_deref(), Some("node"));
        assert_eq!(a.dependencies, ["package.json"]);
        let refused = |source: Value, strategy: Value| {
            job(&config(source, strategy), &default_retry_policy()).unwrap_err()
        };
        let upload = json!({"archive_url": format!("upload://{id}")});
        for (source, strategy, what) in [
            (
                json!({"archive_url": "upload://../../x"}),
                json!({}),
                "not an upload's id",
            ),
            (
                json!({"archive_url": "/etc/passwd"}),
                json!({}),
                "give upload://ID",
            ),
            (
                json!({"archive_url": format!("upload://{id}"), "archive_type": "rar"}),
                json!({}),
                "archive_type",
            ),
            (
                json!({"archive_url": format!("upload://{id}"), "build_context": "../x"}),
                json!({}),
                "build_context",
            ),
            (
                upload.clone(),
                json!({"archive_strategy": {"dependencies": ["/etc/passwd"]}}),
                "dependencies",
            ),
        ] {
            match refused(source, strategy) {
                Refusal::Invalid(m) => assert!(m.contains(what), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        match refused(
            json!({"archive_url": "http://example.com/a.zip"}),
            json!({}),
        ) {
            Refusal::Invalid(m) => assert!(m.contains("https://"), "{m}"),
            other => panic!("{other:?}"),
        }
        let fetched = job(
            &config(
                json!({"archive_url": "https://example.com/a.zip#sha256=00"}),
                json!({}),
            ),
            &default_retry_policy(),
        )
        .unwrap();
        assert_eq!(
            fetched.archive.unwrap().url.as_deref(),
            Some("https://example.com/a.zip#sha256=00")
        );
        assert!(matches!(
            refused(
                upload,
                json!({"docker_strategy": {"optimize_for_size": true}})
            ),
            Refusal::Unimplemented(_)
        ));
        let git_with_archive_strategy = parse(
            r#"{"config": {"source": {"docker_image": {"image_uri": "alpine"}},
                "strategy": {"archive_strategy": {"runtime": "node"}}}}"#,
        );
        assert!(matches!(
            job(&git_with_archive_strategy, &default_retry_policy()),
            Err(Refusal::Invalid(m)) if m.contains("only for an archive source")
        ));
        let archive_as_image = parse(
            r#"{"config": {"source": {"docker_image": {"image_uri": "archive:/etc/passwd"}}}}"#,
        );
        assert!(job(&archive_as_image, &default_retry_policy()).is_err());
    }

    #[test]
    fn the_three_example_configs_parse_and_are_taken() {
        // Both docker examples are taken as written, their options honoured.
        let node = job(&parse(NODE), &default_retry_policy()).unwrap();
        assert!(node.optimize_for_size && !node.remove_dev_packages && !node.no_harden);
        assert_eq!(node.commands.len(), 2);
        let webapp = parse(WEBAPP);
        assert_eq!(
            secrets(&webapp).unwrap().registry.as_deref(),
            Some("github_user:ghp_token")
        );
        let taken = job(&webapp, &default_retry_policy()).unwrap();
        assert!(taken.optimize_for_size && taken.remove_dev_packages);
        assert_eq!((taken.init, taken.compression), ("systemd", Some("gzip")));
        assert_eq!(taken.size_limit, Some(2147483648));
        // Hardening is on unless a strategy turns it off; the layers are
        // kept when asked.
        let unhardened = parse(&WEBAPP.replace(
            r#""preserve_layers": false"#,
            r#""preserve_layers": false, "harden": false"#,
        ));
        assert!(job(&unhardened, &default_retry_policy()).unwrap().no_harden);
        let layered =
            parse(&WEBAPP.replace(r#""preserve_layers": false"#, r#""preserve_layers": true"#));
        assert!(
            job(&layered, &default_retry_policy())
                .unwrap()
                .preserve_layers
        );
        // The Git example: its Dockerfile.production is taken, its build
        // args checked, and INIT_STRATEGY_CUSTOM wants its script.
        let git = parse(GIT);
        assert!(
            matches!(job(&git, &default_retry_policy()), Err(Refusal::Invalid(m)) if m.contains("custom_init_script"))
        );
        // With its script it is taken whole, the layer cache included.
        let scripted = parse(&GIT.replace(
            r#""init_strategy": "INIT_STRATEGY_CUSTOM""#,
            r#""init_strategy": "INIT_STRATEGY_CUSTOM", "custom_init_script": "exec /app/run""#,
        ));
        let taken = job(&scripted, &default_retry_policy()).unwrap();
        assert_eq!(taken.init, "custom");
        assert_eq!(taken.init_script.as_deref(), Some("exec /app/run"));
        let project = taken.project.expect("a Git project");
        assert_eq!(project.dockerfile.as_deref(), Some("Dockerfile.production"));
        assert_eq!(project.build_system, builderd_build::BuildSystem::Docker);
        assert!(project.cache_dependencies);
        assert_eq!(
            project.build_args,
            [
                ("BUILD_VERSION".to_string(), "{{.GitCommit}}".to_string()),
                ("ENV".to_string(), "production".to_string())
            ]
        );
        assert_eq!(
            secrets(&git).unwrap().git,
            Some(GitSecret::Token("github_token".into()))
        );
        let shown = serde_json::to_string(&redacted(&webapp)).unwrap();
        assert!(
            !shown.contains("ghp_token") && shown.contains("github_user"),
            "{shown}"
        );
    }

    #[test]
    fn sources_that_read_the_servers_own_files_are_refused() {
        for image in [
            "dir:abc",
            "dir:/etc",
            "git:repo",
            "git:/srv/repo#main",
            "oci:/etc",
            "docker-archive:/etc/passwd",
        ] {
            let config = parse(
                &json!({"config": {"source": {"docker_image": {"image_uri": image}}}}).to_string(),
            );
            assert!(
                matches!(job(&config, &default_retry_policy()), Err(Refusal::Invalid(m)) if m.contains("image_uri")),
                "{image} was taken"
            );
        }
    }

    #[test]
    fn custom_commands_are_taken_in_order_and_bad_ones_named() {
        let config = |commands: Value| {
            parse(
                &json!({"config": {"source": {"docker_image": {"image_uri": "node:18-alpine"}},
                  "strategy": {"docker_strategy": {"custom_commands": commands}}}})
                .to_string(),
            )
        };
        let j = job(
            &config(json!([
                "npm ci --only=production",
                "npm cache clean --force"
            ])),
            &default_retry_policy(),
        )
        .unwrap();
        assert_eq!(
            j.commands,
            ["npm ci --only=production", "npm cache clean --force"]
        );
        let field = "config.strategy.docker_strategy.custom_commands";
        for (commands, why) in [
            (json!(["true", " "]), format!("{field}[1]: empty")),
            (json!(["a\u{0}b"]), format!("{field}[0]: holds a NUL byte")),
            (
                json!(["x".repeat(MAX_COMMAND_BYTES + 1)]),
                format!("{field}[0]: 16385 bytes; at most 16384"),
            ),
            (
                json!(vec!["true"; MAX_COMMANDS + 1]),
                format!("{field}: 65 commands; at most 64"),
            ),
        ] {
            assert_eq!(
                job(&config(commands), &default_retry_policy()),
                Err(Refusal::Invalid(why))
            );
        }
    }

    #[test]
    fn defaults_ask_for_nothing_and_camel_case_works() {
        let j = job(
            &parse(
            r#"{"config": {"source": {"dockerImage": {"imageUri": "alpine:3.20"}},
              "target": {"microvmRootfs": {"initStrategy": "INIT_STRATEGY_SYSTEMD", "compression": "zstd",
                "sizeLimitBytes": "1000", "runtimeConfig": {"cmd": ["sh"], "env": {"A": "1"}}}},
              "strategy": {"dockerStrategy": {"optimizeForSize": false, "preserveLayers": false}},
              "retryPolicy": {"maxRetries": 1}}}"#,
            ),
            &default_retry_policy(),
        )
        .unwrap();
        assert_eq!(j.image, "alpine:3.20");
        assert_eq!(
            (j.init, j.compression, j.size_limit),
            ("systemd", Some("zstd"), Some(1000))
        );
        assert_eq!(j.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(j.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(j.retry.max_retries, 1);
        assert_eq!(
            j.retry.retry_on,
            RetryCause::ALL.to_vec(),
            "the rest from the defaults"
        );
    }

    #[test]
    fn the_seeds_retry_policy_parses_and_bad_values_are_named() {
        let j = job(
            &parse(
                r#"{"config": {"source": {"docker_image": {"image_uri": "alpine"}},
                  "retry_policy": {"max_retries": 5, "backoff_strategy": "linear", "base_delay": "30s",
                    "max_delay": "5m", "retry_on": ["NETWORK_ERROR", "REGISTRY_RATE_LIMIT"]}}}"#,
            ),
            &default_retry_policy(),
        )
        .unwrap();
        assert_eq!(
            j.retry,
            RetryPolicy {
                max_retries: 5,
                backoff: Backoff::Linear,
                base_delay: Duration::from_secs(30),
                max_delay: Duration::from_secs(300),
                retry_on: vec![RetryCause::Network, RetryCause::RateLimit],
            }
        );
        for (policy, field) in [
            (r#"{"backoff_strategy": "random"}"#, "backoff_strategy"),
            (r#"{"base_delay": "soon"}"#, "base_delay"),
            (r#"{"base_delay": "10s", "max_delay": "1s"}"#, "max_delay"),
            (r#"{"retry_on": ["DISK_ERROR"]}"#, "retry_on"),
            (r#"{"max_retries": -1}"#, "max_retries"),
        ] {
            let config = format!(
                r#"{{"config": {{"source": {{"docker_image": {{"image_uri": "alpine"}}}}, "retry_policy": {policy}}}}}"#
            );
            match job(&parse(&config), &default_retry_policy()) {
                Err(Refusal::Invalid(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{policy}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_values_are_refused_with_their_field() {
        let refused = |json: &str| match job(&parse(json), &default_retry_policy()) {
            Err(Refusal::Invalid(m)) => m,
            other => panic!("{json}: {other:?}"),
        };
        assert!(refused(
            r#"{"config": {"source": {"docker_image": {"image_uri": "alpine"}},
            "target": {"microvm_rootfs": {"format": "squashfs"}}}}"#
        )
        .contains("format"));
        assert!(
            refused(r#"{"config": {"source": {"docker_image": {"image_uri": "oci:/etc"}}}}"#)
                .contains("registry")
        );
        assert!(refused(r#"{"config": {}}"#).contains("config.source"));
        assert!(refused(
            r#"{"config": {"source": {"docker_image": {"image_uri": "alpine"}},
            "target": {"microvm_rootfs": {"compression": "brotli"}}}}"#
        )
        .contains("compression"));
        assert!(refused(
            r#"{"config": {"source": {"docker_image": {"image_uri": "alpine"}},
            "target": {"microvm_rootfs": {"init_strategy": "INIT_STRATEGY_CUSTOM"}}}}"#
        )
        .contains("custom_init_script"));
    }

    #[test]
    fn git_sources_are_taken_or_refused_with_their_field() {
        let git = |source: Value, strategy: Value| {
            parse(
                &json!({"config": {"source": {"git_repository": source},
                    "strategy": {"git_strategy": strategy}}})
                .to_string(),
            )
        };
        let ok = job(
            &git(
                json!({"clone_url": "https://git.example.com/org/app.git", "ref": "refs/pull/7/head",
                       "context_path": "services/api", "auth": {"token": "t0k"}}),
                json!({"build_system": "docker", "dockerfile_path": "Dockerfile.prod",
                       "build_args": {"B": "{{.GitShortCommit}}", "A": "1"},
                       "secrets": {"npm": "npm-token-value"}}),
            ),
            &default_retry_policy(),
        )
        .unwrap();
        assert_eq!(
            ok.image,
            "git+https://git.example.com/org/app.git#refs/pull/7/head"
        );
        assert_eq!(ok.source_type, "git_repository");
        let p = ok.project.unwrap();
        assert_eq!(p.dockerfile.as_deref(), Some("Dockerfile.prod"));
        assert_eq!(p.context.as_deref(), Some("services/api"));
        assert_eq!(
            p.build_args,
            [
                ("A".into(), "1".into()),
                ("B".into(), "{{.GitShortCommit}}".into())
            ]
        );
        assert_eq!(p.secret_ids, ["npm"]);
        for scheme in ["ssh://git@h/x.git", "git://h/x.git", "http://h/x.git"] {
            let j = job(
                &git(json!({"clone_url": scheme}), json!({})),
                &default_retry_policy(),
            );
            assert!(j.is_ok(), "{scheme}: {j:?}");
        }

        let refused = |source: Value, strategy: Value| match job(
            &git(source, strategy),
            &default_retry_policy(),
        ) {
            Err(Refusal::Invalid(m)) | Err(Refusal::Unimplemented(m)) => m,
            Ok(j) => panic!("taken: {j:?}"),
        };
        let url = |u: &str| json!({"clone_url": u});
        for (source, strategy, expected) in [
            (url("file:///etc"), json!({}), "clone_url"),
            (url("/srv/repo.git"), json!({}), "clone_url"),
            (url("git@h:org/x.git"), json!({}), "clone_url"),
            (url("https://bob:hunter2@h/x.git"), json!({}), "--git-creds"),
            (
                json!({"clone_url": "https://h/x.git", "ref": "--upload-pack=x"}),
                json!({}),
                "config.source.git_repository.ref",
            ),
            (
                url("https://h/x.git"),
                json!({"build_system": "maven"}),
                "use auto, docker",
            ),
            (
                url("https://h/x.git"),
                json!({"build_args": {"X": "{{.Nope}}"}}),
                "{{.Nope}}",
            ),
            (
                url("https://h/x.git"),
                json!({"secrets": {"a/b": "x"}}),
                "secret id",
            ),
        ] {
            let m = refused(source.clone(), strategy);
            assert!(m.contains(expected), "{source}: {expected:?} not in {m:?}");
            assert!(!m.contains("hunter2"), "{m}");
        }
        // A git strategy needs a Git source.
        let docker = parse(
            r#"{"config": {"source": {"docker_image": {"image_uri": "alpine"}},
            "strategy": {"git_strategy": {"build_system": "docker"}}}}"#,
        );
        assert!(
            matches!(job(&docker, &default_retry_policy()), Err(Refusal::Invalid(m)) if m.contains("git_repository"))
        );

        // One kind of credentials, fit for the address.
        let auth = |u: &str, a: Value| secrets(&git(json!({"clone_url": u, "auth": a}), json!({})));
        assert!(auth("https://h/x", json!({"token": "t", "password": "p"})).is_err());
        assert!(auth("https://h/x", json!({"username": "u"})).is_err());
        assert!(auth("https://h/x", json!({"ssh_key": "k"})).is_err());
        assert!(auth("ssh://h/x", json!({"token": "t"})).is_err());
        assert_eq!(
            auth("ssh://h/x", json!({"ssh_key": "KEY"})).unwrap().git,
            Some(GitSecret::SshKey("KEY".into()))
        );

        // What is stored and shown holds no secret, and is taken again.
        let full = git(
            json!({"clone_url": "https://h/x.git", "auth": {"username": "u", "password": "pw-value"}}),
            json!({"secrets": {"npm": "npm-token-value"}}),
        );
        let shown = serde_json::to_string(&redacted(&full)).unwrap();
        assert!(
            !shown.contains("pw-value") && !shown.contains("npm-token-value"),
            "{shown}"
        );
        let again: BuildConfig = serde_json::from_str(&shown).unwrap();
        assert_eq!(
            job(&again, &default_retry_policy())
                .unwrap()
                .project
                .unwrap()
                .secret_ids,
            ["npm"]
        );
    }
}
