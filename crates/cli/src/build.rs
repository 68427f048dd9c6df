//! `builderd build SOURCE -o OUT.ext4`: a container image to an ext4 root
//! filesystem in one pass (layers flattened newest first, file data straight
//! into the image), with a metadata file `OUT.json` beside it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use builderd_ext4::Writer;
use builderd_oci::{
    docker_config_credentials, BlobCache, BlobStore, Credentials, DockerArchive, Image, OciLayout,
    Outbound, Platform, Registry, Source,
};
use serde::Serialize;

use crate::blob_checks::Failed;
use crate::boot_args::BootArgs;
use crate::events::{self, Limit, SizeLimitExceeded};
use crate::ext4_args::Ext4Args;
use crate::layer_streams::{Blob, Streams};
use crate::output::Pending;
use crate::progress::Bar;
use crate::pull::Downloads;
use crate::retry_args::RetryArgs;
use crate::units::{count, human};

#[derive(clap::Args)]
pub struct Args {
    /// The image: docker://REF or a bare REF (alpine means
    /// docker.io/library/alpine:latest; tags and @sha256: digests),
    /// oci:DIR[:TAG] (an OCI image layout), oci-archive:FILE[:TAG] (a tar of
    /// one) or docker-archive:FILE (`docker save` output).
    source: String,
    /// The image file to write; its metadata goes to OUT.json.
    #[arg(short, long)]
    output: PathBuf,
    /// The platform to pick from a multi-platform image (os/arch[/variant]);
    /// default: this machine's.
    #[arg(long)]
    platform: Option<String>,
    /// Registry credentials (otherwise ~/.docker/config.json's, if any).
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "BUILDERD_CREDS",
        hide_env_values = true
    )]
    creds: Option<String>,
    /// Never read ~/.docker/config.json (the service builds for tenants, who
    /// must not borrow the operator's registry logins).
    #[arg(long)]
    no_docker_config: bool,
    /// How to report: text for a person, json lines on stderr for a program.
    #[arg(long, value_enum, default_value = "text")]
    events: EventsFormat,
    /// Allow plain HTTP to this registry (loopback registries always may).
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// Connect to public addresses only: no loopback, private, link-local or
    /// other special-purpose address, for the registry, its token realm and
    /// every redirect (the service's builds run so, unless its operator
    /// allows private registries).
    #[arg(long)]
    public_only: bool,
    /// After resolving a registry image, print `{"resolved": …}` (with
    /// --events json) and wait for a line "build" on stdin before going on
    /// (the service looks in its artifact cache meanwhile).
    #[arg(long, hide = true)]
    hold_after_resolve: bool,
    /// The blob cache, shared by all builds.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write the blob cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    #[command(flatten)]
    retry: RetryArgs,
    #[command(flatten)]
    ext4: Ext4Args,
    #[command(flatten)]
    boot: BootArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFormat {
    Text,
    Json,
}

/// The metadata file written beside the image.
#[derive(Serialize)]
struct Metadata<'a> {
    builderd_version: &'static str,
    source: &'a str,
    manifest_digest: &'a str,
    manifest_media_type: &'a str,
    config_digest: &'a str,
    platform: String,
    layers: &'a [builderd_oci::LayerInfo],
    config: &'a builderd_oci::RunConfig,
    init_strategy: &'static str,
    kernel_cmdline: String,
    run_config: &'a builderd_rootfs::RunConfig,
    image: ImageInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    compressed: Option<CompressedInfo>,
    flatten: FlattenInfo,
    timings_ms: Timings,
}

#[derive(Serialize)]
struct ImageInfo {
    file: String,
    sha256: String,
    size_bytes: u64,
    allocated_bytes: u64,
    inodes: u64,
    file_data_bytes: u64,
}

#[derive(Serialize)]
struct CompressedInfo {
    file: String,
    format: &'static str,
    sha256: String,
    size_bytes: u64,
}

#[derive(Serialize)]
struct FlattenInfo {
    entries_written: u64,
    entries_masked: u64,
    whiteouts: u64,
    hardlinks_fixed: u64,
}

#[derive(Serialize)]
struct Timings {
    resolve: u128,
    flatten: u128,
    finish: u128,
    checksum: u128,
    compress: u128,
    total: u128,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    if args.events == EventsFormat::Json {
        events::enable_json();
    }
    events::stage("preparing");
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let source = Source::parse(&args.source)?;
    // A file or directory of that name here is what was meant, not Docker Hub.
    if matches!(source, Source::Registry(_)) && Path::new(&args.source).exists() {
        return Err(events::SourceError(builderd_oci::path_hint(&args.source)).into());
    }
    let bars = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
    // Keeps a --no-cache build's private blob directory until the end.
    let mut _scratch = None;
    // The cache a registry build reads from, to drop a blob that fails its check.
    let mut cached = None;
    let (blobs, image): (Blobs, Image) = match source {
        Source::OciLayout { dir, tag } => {
            let layout = OciLayout::open(&dir)?;
            let image = layout.resolve(tag.as_deref(), &platform)?;
            (Blobs::Local(Box::new(layout)), image)
        }
        Source::Registry(r) => {
            let cache = if args.no_cache {
                let dir = tempfile::Builder::new()
                    .prefix("builderd-blobs-")
                    .tempdir()?;
                let cache = BlobCache::open(dir.path())?;
                _scratch = Some(dir);
                cache
            } else {
                BlobCache::open(
                    &args
                        .cache_dir
                        .clone()
                        .unwrap_or_else(BlobCache::default_dir),
                )?
            };
            let creds = match &args.creds {
                Some(c) => {
                    let (username, password) =
                        c.split_once(':').context("--creds takes USER:PASS")?;
                    Some(Credentials {
                        username: username.into(),
                        password: password.into(),
                    })
                }
                None if args.no_docker_config => None,
                None => docker_config_credentials(&r.registry),
            };
            let outbound = if args.public_only {
                Outbound::public_only("--allow-private-registries")
            } else {
                Outbound::any()
            };
            let registry = Registry::new(
                &r,
                creds,
                &args.insecure_registry,
                args.retry.policy()?,
                args.retry.stall_timeout(),
                &outbound,
                Box::new(events::retry),
            )?;
            let image = builderd_oci::resolve_remote(&registry, &cache, &r, &platform)?;
            if args.hold_after_resolve {
                events::resolved(&image);
                wait_for_go()?;
            }
            events::stage("downloading");
            let cache = Arc::new(cache);
            cached = Some(cache.clone());
            // The layers download in the background from now on; the
            // flatten reads each one as it comes.
            let downloads = Downloads::start(
                Arc::new(registry),
                cache,
                r.origin(),
                image.layers.clone(),
                bars.clone(),
            );
            (Blobs::Pull(downloads), image)
        }
        Source::OciArchive { file, tag } => {
            let layout = OciLayout::open_archive(&file)?;
            let image = layout.resolve(tag.as_deref(), &platform)?;
            (Blobs::Local(Box::new(layout)), image)
        }
        Source::DockerArchive { file } => {
            let (archive, image) = DockerArchive::open(&file)?;
            (Blobs::Local(Box::new(archive)), image)
        }
    };
    let resolved = Instant::now();
    events::info(&format!(
        "{}: manifest {}, {}, {}",
        args.source,
        image.manifest_digest,
        count(image.layers.len() as u64, "layer"),
        human(image.layers.iter().map(|l| l.size).sum())
    ));

    // The request is checked before the long part.
    let plan = args.boot.plan(&image.run)?;
    let json_path = metadata_path(&args.output);
    // The compressed copy, if asked for: its final name and its temp file.
    let copy = crate::compress::path_for(&args.output, args.boot.compression)
        .map(|path| Pending::new(&path).map(|pending| (path, pending)))
        .transpose()?;
    let pending = Pending::new(&args.output)?;
    let pending_json = Pending::new(&json_path)?;
    let limit = image_limit(&args.boot);
    let mut ext4 = args.ext4.options()?;
    ext4.max_bytes = limit.as_ref().map(|(bytes, _)| *bytes);
    let mut writer = Writer::new(pending.file()?, ext4)?;
    let total: u64 = image.layers.iter().map(|l| l.size).sum();
    let bar = Bar::bytes(total, "writing");
    bar.join(&bars);
    let terminal = std::io::stderr().is_terminal();
    // A pull is downloading until its last layer is in, building after.
    if matches!(blobs, Blobs::Local(_)) {
        events::stage("building");
    }
    let (flattened, checks) = {
        let open_blob = |i: usize| match &blobs {
            Blobs::Local(store) => Ok(Blob {
                reader: store
                    .open_blob(&image.layers[i].digest)
                    .map_err(std::io::Error::other)?,
                verified: false,
            }),
            Blobs::Pull(downloads) => Ok(downloads.open(i)),
        };
        let streams = Streams::new(&image.layers, &open_blob, bar.clone());
        let layers = streams.layers();
        let flattened = builderd_flatten::flatten(&layers, &mut writer, &|layer| {
            if !terminal {
                events::info(&format!("layer {} written", layer.name))
            }
        });
        drop(layers);
        (flattened, streams.take_checks())
    };
    // Content past the limit stopped the writing: say which limit.
    let flattened = flattened.map_err(|e| match &limit {
        Some((bytes, which)) if ran_out_of_room(&e) => anyhow::Error::new(SizeLimitExceeded {
            size: None,
            limit: *bytes,
            which: which.clone(),
        }),
        _ => anyhow::Error::new(e),
    });
    let stats = match (flattened, blobs) {
        (Ok(stats), Blobs::Pull(d)) => d.finish().map(|()| stats)?,
        (Ok(stats), Blobs::Local(_)) => stats,
        // A layer that could not be read because its download failed: the
        // download's own error says what happened.
        (Err(e), Blobs::Pull(d)) => match d.abandon() {
            Some(download) => return Err(download.into()),
            None => {
                return Err(checks
                    .join()
                    .err()
                    .map_or(e, |f| failed(f, cached.as_deref())))
            }
        },
        // A blob that is not what its digest says fails to decompress or
        // parse first, more often than not: its check says why.
        (Err(e), Blobs::Local(_)) => {
            return Err(checks
                .join()
                .err()
                .map_or(e, |f| failed(f, cached.as_deref())))
        }
    };
    bar.finish();
    let installed = builderd_rootfs::install(&mut writer, &plan)?;
    for w in &installed.warnings {
        events::warn(w);
    }
    let flattened = Instant::now();
    events::stage("optimizing");
    let (summary, file) = writer.finish()?;
    drop(file);
    if let Some((bytes, which)) = limit {
        if summary.image_bytes() > bytes {
            return Err(SizeLimitExceeded {
                size: Some(summary.image_bytes()),
                limit: bytes,
                which,
            }
            .into());
        }
    }
    let finished = Instant::now();
    events::stage("packaging");
    // Hashing (CPU) and flushing to disk (I/O) overlap, and the blob checks
    // still running get the core the hash leaves idle.
    let sha256 = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| crate::sparse::sha256(pending.path()));
        let flushed = pending
            .file()
            .and_then(|f| f.sync_all().context("flushing the image to disk"));
        let sha256 = hashing.join().expect("the hashing thread does not panic");
        let checked = checks.join().map_err(|f| failed(f, cached.as_deref()));
        checked.and(flushed).and(sha256)
    })?;
    let checksummed = Instant::now();
    let compressed = match &copy {
        Some((path, p)) => {
            let (sha256, size_bytes) =
                crate::compress::compress(pending.path(), p, args.boot.compression)?;
            Some(CompressedInfo {
                file: path.display().to_string(),
                format: args.boot.compression.name(),
                sha256,
                size_bytes,
            })
        }
        None => None,
    };
    let compressed_at = Instant::now();

    let allocated = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(pending.path())?.blocks() * 512
    };
    let ms = |a: Instant, b: Instant| b.duration_since(a).as_millis();
    let meta = Metadata {
        builderd_version: env!("CARGO_PKG_VERSION"),
        source: &args.source,
        manifest_digest: image.manifest_digest.as_str(),
        manifest_media_type: &image.manifest_media_type,
        config_digest: image.config_digest.as_str(),
        platform: image.platform.to_string(),
        layers: &image.layers,
        config: &image.run,
        init_strategy: plan.strategy.enum_name(),
        kernel_cmdline: installed.kernel_cmdline,
        run_config: &plan.run,
        image: ImageInfo {
            file: args.output.display().to_string(),
            sha256,
            size_bytes: summary.image_bytes(),
            allocated_bytes: allocated,
            inodes: summary.inodes,
            file_data_bytes: summary.file_bytes,
        },
        flatten: FlattenInfo {
            entries_written: stats.written,
            entries_masked: stats.masked,
            whiteouts: stats.whiteouts,
            hardlinks_fixed: stats.links_fixed,
        },
        timings_ms: Timings {
            resolve: ms(started, resolved),
            flatten: ms(resolved, flattened),
            finish: ms(flattened, finished),
            checksum: ms(finished, checksummed),
            compress: ms(checksummed, compressed_at),
            total: ms(started, Instant::now()),
        },
        compressed,
    };
    serde_json::to_writer_pretty(pending_json.file()?, &meta)?;
    // The metadata goes last: while it is missing, the build is not done.
    pending.commit()?;
    let mut committed = vec![args.output.clone()];
    let result = match copy {
        Some((path, p)) => p.commit().map(|_| committed.push(path)),
        None => Ok(()),
    }
    .and_then(|()| pending_json.commit().map(drop));
    if let Err(e) = result {
        for path in committed {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    events::progress(
        "written",
        summary.image_bytes(),
        summary.image_bytes(),
        stats.written,
        true,
    );
    println!(
        "wrote {}: {}, {} ({} masked by upper layers), {} of file data; image {} ({} allocated); {:.2} s",
        args.output.display(),
        count(image.layers.len() as u64, "layer"),
        count(stats.written, "entry"),
        stats.masked,
        human(summary.file_bytes),
        human(summary.image_bytes()),
        human(allocated),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The error of a failed blob check. A cached blob whose bytes are not what
/// its digest says leaves the cache, so that the next build downloads it.
fn failed(f: Failed, cache: Option<&BlobCache>) -> anyhow::Error {
    let Some(cache) = cache.filter(|_| f.mismatch()) else {
        return f.error.into();
    };
    match cache.remove(&f.digest) {
        Ok(()) => anyhow::Error::from(f.error).context(format!(
            "the cached blob {} is removed from the cache; building again downloads it",
            f.digest
        )),
        Err(e) => anyhow::Error::from(f.error).context(e),
    }
}

/// The lower of the size limit and the tenant's storage left, and which.
fn image_limit(boot: &BootArgs) -> Option<(u64, Limit)> {
    let size = boot
        .size_limit
        .map(|b| (b, Limit::Size(boot.size_limit_name.clone())));
    let storage = boot.storage_left.map(|b| (b, Limit::Storage));
    match (size, storage) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The writer had no block left to give: with a limit set, the content
/// went past it.
fn ran_out_of_room(e: &builderd_flatten::Error) -> bool {
    use builderd_ext4::Error::NoSpace;
    // Both wrap the writer's error transparently: it is not among the causes.
    matches!(
        e,
        builderd_flatten::Error::Ext4(NoSpace { .. })
            | builderd_flatten::Error::Layer {
                source: builderd_import::Error::Ext4(NoSpace { .. }),
                ..
            }
    )
}

/// Waits for the service's word to go on after the resolution.
fn wait_for_go() -> Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("waiting for the server's word")?;
    match line.trim() {
        "build" => Ok(()),
        other => anyhow::bail!("the server said {other:?}, not \"build\": stopping"),
    }
}

/// Where the layer blobs come from.
enum Blobs {
    /// An OCI layout or an archive, read in place.
    Local(Box<dyn BlobStore>),
    /// A registry, into the blob cache: downloading.
    Pull(Downloads),
}

/// `rootfs.ext4` → `rootfs.ext4.json`.
fn metadata_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".json");
    PathBuf::from(name)
}
