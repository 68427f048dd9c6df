//! `builderd serve` and `builderd tenant`: the build service and its tenants.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use builderd_service::Tier;

/// The service's data directory, for every command that opens one.
#[derive(clap::Args, Clone)]
pub struct DataDir {
    /// The server's data directory: database, artifacts, blob cache and the
    /// operator key (default: ${XDG_DATA_HOME:-~/.local/share}/builderd).
    #[arg(long = "data-dir", value_name = "DIR", env = "BUILDERD_DATA_DIR")]
    dir: Option<PathBuf>,
}

impl DataDir {
    /// The directory, told on stderr: a command run against the wrong one
    /// (a forgotten --data-dir) should not pass unnoticed.
    pub fn resolve(&self) -> PathBuf {
        let dir = self.quietly();
        eprintln!("builderd: data directory {}", dir.display());
        dir
    }

    /// The directory, untold (`serve` names it in its own log, which may be
    /// JSON lines only).
    pub fn quietly(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(builderd_service::default_data_dir)
    }
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where to listen (Connect, gRPC and plain HTTP on one port).
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    #[command(flatten)]
    data_dir: DataDir,
    /// Builds running at once over all tenants (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Let X-Tenant-ID alone name the tenant: only behind a gateway (or
    /// mTLS) that authenticates callers and sets that header itself.
    #[arg(long)]
    trust_tenant_header: bool,
    /// Seconds running builds may go on after SIGTERM before they are
    /// stopped and queued again.
    #[arg(long, value_name = "SECONDS", default_value = "20")]
    shutdown_grace: u64,
    /// Allow plain HTTP to this registry (loopback registries always may).
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// The operator's hardening policy (JSON: strip_setuid, allow_setuid,
    /// remove, modes; see docs/docker-strategy.md), for every build that
    /// hardens.
    #[arg(long, value_name = "FILE")]
    hardening_policy: Option<PathBuf>,
    /// Stop any build after this many seconds, even if its tier allows more.
    #[arg(long, value_name = "SECONDS")]
    max_build_time: Option<u64>,
    /// The retry policy of builds whose config gives none (or leaves fields
    /// out), in a build config's shape, e.g. '{"max_retries": 5,
    /// "backoff_strategy": "linear", "base_delay": "2s", "max_delay": "1m",
    /// "retry_on": ["NETWORK_ERROR"]}'. Default: 3 retries, exponential from
    /// 1s to 30s, on NETWORK_ERROR, TEMPORARY_RESOURCE_ERROR and REGISTRY_RATE_LIMIT.
    #[arg(long, value_name = "JSON", value_parser = builderd_service::parse_retry_policy)]
    default_retry_policy: Option<builderd_oci::RetryPolicy>,
    /// The bound on the layer blob and artifact caches together (past it,
    /// the least recently used go first, never what a running build reads).
    #[arg(long, value_name = "BYTES", value_parser = crate::units::parse_bytes, default_value = "20G")]
    cache_max_bytes: u64,
    /// Let webhooks go to loopback, link-local and private addresses (off:
    /// a tenant's webhook must not reach into the server's own network).
    #[arg(long)]
    allow_private_webhooks: bool,
    /// Let builds pull from loopback, link-local and private registries
    /// (off: a tenant's image reference, its token realm and every redirect
    /// must lead to a public address).
    #[arg(long)]
    allow_private_registries: bool,
    /// Let Git sources (and their submodules) be fetched from loopback,
    /// link-local and private addresses.
    #[arg(long)]
    allow_private_git: bool,
    /// Allow plain git+http:// and git:// to this host (loopback always may,
    /// if private addresses are allowed).
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_git_host: Vec<String>,
    /// The ssh servers' host keys, for git+ssh:// sources (OpenSSH's
    /// known_hosts form); without it no ssh server is trusted.
    #[arg(long, value_name = "FILE")]
    ssh_known_hosts: Option<PathBuf>,
    /// The base images of detected stacks (JSON: {"node": {"18": "REF",
    /// "default": "REF"}, …}), over builderd's own table.
    #[arg(long, value_name = "FILE")]
    base_images: Option<PathBuf>,
    /// Serve Prometheus `/metrics` on this address instead of the API's.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Delete the artifacts and logs of builds finished longer ago than
    /// this (e.g. 30d, 12h); their records stay. Default: keep them.
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// How long an uploaded archive no build names is kept (each build that
    /// names it starts this again).
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration, default_value = "24h")]
    upload_lifetime: Duration,
    /// Let archive URLs name loopback, private and link-local addresses
    /// (and plain http on loopback); by default only public ones, over
    /// https.
    #[arg(long)]
    allow_private_archive_urls: bool,
    /// The largest archive upload, whatever the tier's storage room.
    #[arg(long, value_name = "BYTES", value_parser = crate::units::parse_bytes, default_value = "4G")]
    max_upload_bytes: u64,
    /// The server's own log on stderr: lines for a person, or one JSON
    /// object a line (timestamp, level, message and fields) for a collector.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export a trace of each build (a span per stage) to this
    /// OpenTelemetry collector over OTLP/HTTP with JSON, e.g.
    /// http://collector:4318 (spans go to its /v1/traces).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Bound every build's memory to this (e.g. 512M), below its tier's
    /// limit if smaller.
    #[arg(long, value_name = "BYTES", value_parser = crate::units::parse_bytes)]
    max_build_memory: Option<u64>,
    /// What the network of builds' steps (`custom_commands`) reaches: by
    /// the tenant's tier (free: none; the others: egress, public addresses
    /// only), or none or egress for every tier.
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = StepsNetwork::Tier)]
    steps_network: StepsNetwork,
    /// Connections open at once (more wait until one closes).
    #[arg(long, value_name = "N", default_value = "1024")]
    max_connections: usize,
    /// How long a client has to send a request's head, on a new connection
    /// or an idle kept-alive one, before the connection is closed.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    header_timeout: Duration,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StepsNetwork {
    Tier,
    None,
    Egress,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
}

pub fn serve(args: ServeArgs) -> Result<()> {
    init_logging(args.log_format);
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = builderd_service::Options {
        listen: args.listen,
        data_dir: args.data_dir.quietly(),
        exe: std::env::current_exe().context("finding the builderd binary")?,
        workers,
        trust_tenant_header: args.trust_tenant_header,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        insecure_registries: args.insecure_registry,
        hardening_policy: match args.hardening_policy {
            Some(file) => {
                builderd_build::check_hardening_policy(&file)?;
                Some(std::path::absolute(&file).context("--hardening-policy")?)
            }
            None => None,
        },
        max_build_time: args.max_build_time.map(Duration::from_secs),
        retry_defaults: args
            .default_retry_policy
            .unwrap_or_else(builderd_service::default_retry_policy),
        cache_max_bytes: args.cache_max_bytes,
        allow_private_webhooks: args.allow_private_webhooks,
        allow_private_registries: args.allow_private_registries,
        git: builderd_service::GitPolicy {
            allow_private: args.allow_private_git,
            insecure_hosts: args.insecure_git_host,
            known_hosts: args.ssh_known_hosts,
            base_images: args.base_images,
        },
        metrics_listen: args.metrics_listen,
        retention: args.retention,
        upload_lifetime: args.upload_lifetime,
        allow_private_archive_urls: args.allow_private_archive_urls,
        max_upload_bytes: args.max_upload_bytes,
        otlp_endpoint: args.otlp_endpoint,
        max_build_memory: args.max_build_memory,
        steps_network: match args.steps_network {
            StepsNetwork::Tier => None,
            StepsNetwork::None => Some(builderd_build::StepNetwork::None),
            StepsNetwork::Egress => Some(builderd_build::StepNetwork::Egress),
        },
        limits: builderd_service::Limits {
            max_connections: args.max_connections,
            header_timeout: args.header_timeout,
        },
    };
    raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new()?;
    let served = runtime.block_on(builderd_service::serve(opts));
    // What is still running (a connection, a blocking read) does not hold
    // the process past its shutdown: SIGTERM ends it within the grace.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

/// Each connection, build and database reader is a descriptor: the soft
/// limit (often 1024) goes up to the hard one, so `--max-connections` is
/// the bound that holds, not EMFILE.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a struct this function owns.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[derive(clap::Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints its API key alone on stdout's last line.
    Create {
        name: String,
        #[arg(long, value_parser = parse_tier)]
        tier: Tier,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// List a tenant's API keys by id (the first digits of each key's hash).
    Keys {
        name: String,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Give a tenant another API key (its other keys keep working: roll the
    /// new one out, then revoke the old); prints it alone on stdout.
    AddKey {
        name: String,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Give a tenant a new API key and revoke all its others at once;
    /// prints it alone on stdout.
    RotateKey {
        name: String,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Revoke one of a tenant's API keys (its id from `builderd tenant
    /// keys`); it stops working at once, also for a running server.
    RevokeKey {
        name: String,
        key_id: String,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Show a tenant's webhook and the secret its deliveries are signed
    /// with; set it with --url (events and headers with it), remove it with
    /// --url "", make a new secret with --rotate-secret.
    Webhook {
        name: String,
        /// Where every build's events go (http or https).
        #[arg(long)]
        url: Option<String>,
        /// Only these events (default: all): build.queued, build.started,
        /// build.completed, build.failed, build.cancelled, build.timeout.
        #[arg(long, value_delimiter = ',', requires = "url")]
        events: Vec<String>,
        /// A header to send with each delivery, NAME:VALUE.
        #[arg(long, value_name = "NAME:VALUE", requires = "url")]
        header: Vec<String>,
        #[arg(long)]
        rotate_secret: bool,
        #[command(flatten)]
        data_dir: DataDir,
    },
}

#[derive(clap::Subcommand)]
pub enum OperatorCommand {
    /// Make a new operator key (written to DATA/operator.key, mode 0600);
    /// the old one stops working at once, also for a running server.
    RotateKey {
        #[command(flatten)]
        data_dir: DataDir,
    },
}

pub fn operator(cmd: OperatorCommand) -> Result<()> {
    match cmd {
        OperatorCommand::RotateKey { data_dir } => {
            let path = builderd_service::rotate_operator_key(&data_dir.resolve())?;
            eprintln!(
                "builderd: a new operator key is in {}; the old one no longer works",
                path.display()
            );
            Ok(())
        }
    }
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    Tier::parse(s).ok_or_else(|| format!("{s:?}: use free, pro, enterprise or dedicated"))
}

pub fn tenant(cmd: TenantCommand) -> Result<()> {
    match cmd {
        TenantCommand::Create {
            name,
            tier,
            data_dir,
        } => {
            let key = builderd_service::create_tenant(&data_dir.resolve(), &name, tier)?;
            eprintln!(
                "builderd: tenant {name} ({} tier) created; its API key (shown once):",
                tier.name()
            );
            println!("{key}");
            Ok(())
        }
        TenantCommand::Keys { name, data_dir } => {
            println!("{:<14} created", "key id");
            for k in builderd_service::tenant_keys(&data_dir.resolve(), &name)? {
                println!("{:<14} {}", k.id, when(k.created_ms));
            }
            Ok(())
        }
        TenantCommand::AddKey { name, data_dir } => {
            let key = builderd_service::new_tenant_key(&data_dir.resolve(), &name, false)?;
            eprintln!("builderd: a new API key for tenant {name} (shown once):");
            println!("{key}");
            Ok(())
        }
        TenantCommand::RotateKey { name, data_dir } => {
            let key = builderd_service::new_tenant_key(&data_dir.resolve(), &name, true)?;
            eprintln!(
                "builderd: a new API key for tenant {name} (shown once); its other keys no longer work:"
            );
            println!("{key}");
            Ok(())
        }
        TenantCommand::RevokeKey {
            name,
            key_id,
            data_dir,
        } => {
            builderd_service::revoke_tenant_key(&data_dir.resolve(), &name, &key_id)?;
            eprintln!("builderd: key {key_id} of tenant {name} revoked");
            Ok(())
        }
        TenantCommand::Webhook {
            name,
            url,
            events,
            header,
            rotate_secret,
            data_dir,
        } => {
            let dir = data_dir.resolve();
            let update = match url {
                Some(url) => Some(builderd_service::Webhook {
                    url,
                    events,
                    headers: header
                        .iter()
                        .map(|h| {
                            h.split_once(':')
                                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                                .with_context(|| format!("--header {h:?}: give NAME:VALUE"))
                        })
                        .collect::<Result<_>>()?,
                }),
                None => None,
            };
            let (w, secret) = builderd_service::tenant_webhook(&dir, &name, update, rotate_secret)?;
            let headers: serde_json::Map<String, serde_json::Value> = w
                .headers
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            println!(
                "{}",
                serde_json::json!({"tenant": name, "url": w.url, "events": w.events,
                                   "headers": headers, "secret": secret})
            );
            Ok(())
        }
    }
}

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// What the service caches hold (layer blobs, whole artifacts), least
    /// recently used first.
    Ls {
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Evict what no running build uses, least recently used first, until
    /// the caches hold at most --max-bytes (default: evict all of it).
    Prune {
        #[arg(long, value_name = "BYTES", value_parser = crate::units::parse_bytes, default_value = "0")]
        max_bytes: u64,
        #[command(flatten)]
        data_dir: DataDir,
    },
}

fn when(ms: i64) -> String {
    let ago = (now_ms() - ms).max(0) / 1000;
    match ago {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn cache(cmd: CacheCommand) -> Result<()> {
    use crate::units::human;
    match cmd {
        CacheCommand::Ls { data_dir } => {
            let entries = builderd_service::cache_list(&data_dir.resolve())?;
            println!(
                "{:<9} {:<71} {:>10}  {:<14} in use",
                "kind", "name", "size", "last used"
            );
            let mut total = 0;
            for e in &entries {
                total += e.bytes as u64;
                println!(
                    "{:<9} {:<71} {:>10}  {:<14} {}",
                    e.kind.name(),
                    e.name,
                    human(e.bytes as u64),
                    when(e.last_used_ms),
                    if e.in_use { "yes" } else { "no" }
                );
            }
            println!("{} entries, {}", entries.len(), human(total));
            Ok(())
        }
        CacheCommand::Prune {
            max_bytes,
            data_dir,
        } => {
            let gone = builderd_service::cache_prune(&data_dir.resolve(), max_bytes)?;
            let freed: u64 = gone.iter().map(|e| e.bytes as u64).sum();
            for e in &gone {
                println!(
                    "evicted {} {} ({})",
                    e.kind.name(),
                    e.name,
                    human(e.bytes as u64)
                );
            }
            println!("{} entries evicted, {} freed", gone.len(), human(freed));
            Ok(())
        }
    }
}
