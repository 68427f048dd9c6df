//! `builderd build SOURCE -o OUT.ext4`: a container image to an ext4 root
//! filesystem in one pass (layers flattened newest first, file data straight
//! into the image), with a metadata file `OUT.json` beside it.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use builderd_ext4::Writer;
use builderd_flatten::Layer;
use builderd_oci::{
    docker_config_credentials, BlobCache, BlobStore, Compression, Credentials, Digest, Doc,
    DockerArchive, Image, ImageRef, OciLayout, Platform, Registry, RetryPolicy, Source,
    VerifyingReader,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::boot_args::BootArgs;
use crate::events::{self, SizeLimitExceeded};
use crate::ext4_args::Ext4Args;
use crate::output::Pending;
use crate::progress::Bar;
use crate::units::human;
use builderd_import::ReadAhead;

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
    /// The blob cache, shared by all builds.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write the blob cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
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

/// Parallel layer downloads.
const DOWNLOADS: usize = 4;

const READ_BUFFER: usize = 1 << 20;

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
    // Keeps a --no-cache build's private blob directory until the end.
    let mut _scratch = None;
    let (store, image): (Box<dyn BlobStore>, Image) = match source {
        Source::OciLayout { dir, tag } => {
            let layout = OciLayout::open(&dir)?;
            let image = layout.resolve(tag.as_deref(), &platform)?;
            (Box::new(layout), image)
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
            let registry = Registry::new(
                &r,
                creds,
                &args.insecure_registry,
                RetryPolicy::default(),
                Box::new(events::warn),
            )?;
            events::stage("downloading");
            let image = pull(&registry, &cache, &r, &platform)?;
            (Box::new(cache), image)
        }
        Source::OciArchive { file, tag } => {
            let layout = OciLayout::open_archive(&file)?;
            let image = layout.resolve(tag.as_deref(), &platform)?;
            (Box::new(layout), image)
        }
        Source::DockerArchive { file } => {
            let (archive, image) = DockerArchive::open(&file)?;
            (Box::new(archive), image)
        }
    };
    let resolved = Instant::now();
    events::info(&format!(
        "{}: manifest {}, {} layers, {}",
        args.source,
        image.manifest_digest,
        image.layers.len(),
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
    events::stage("building");
    let mut writer = Writer::new(pending.file()?, args.ext4.options()?)?;
    let total: u64 = image.layers.iter().map(|l| l.size).sum();
    let bar = Bar::bytes(total, "writing");
    let layers = layers(store.as_ref(), &image, &bar);
    let terminal = std::io::stderr().is_terminal();
    let stats = builderd_flatten::flatten(&layers, &mut writer, &|layer| {
        if !terminal {
            events::info(&format!("layer {} written", layer.name))
        }
    })?;
    bar.finish();
    let installed = builderd_rootfs::install(&mut writer, &plan)?;
    for w in &installed.warnings {
        events::warn(w);
    }
    let flattened = Instant::now();
    events::stage("optimizing");
    let (summary, file) = writer.finish()?;
    drop(file);
    if let Some(limit) = args.boot.size_limit {
        if summary.image_bytes() > limit {
            return Err(SizeLimitExceeded {
                size: summary.image_bytes(),
                limit,
            }
            .into());
        }
    }
    let finished = Instant::now();
    events::stage("packaging");
    // Hashing (CPU) and flushing to disk (I/O) overlap.
    let sha256 = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| file_sha256(pending.path()));
        let flushed = pending
            .file()
            .and_then(|f| f.sync_all().context("flushing the image to disk"));
        let sha256 = hashing.join().expect("the hashing thread does not panic");
        flushed.and(sha256)
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
        "wrote {}: {} layers, {} entries ({} masked by upper layers), {} of file data; image {} ({} allocated); {:.2} s",
        args.output.display(),
        image.layers.len(),
        stats.written,
        stats.masked,
        human(summary.file_bytes),
        human(summary.image_bytes()),
        human(allocated),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `rootfs.ext4` → `rootfs.ext4.json`.
fn metadata_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".json");
    PathBuf::from(name)
}

/// Each layer as a decompressed stream, its blob checked against its digest
/// and size as it is read.
fn layers<'a>(store: &'a dyn BlobStore, image: &'a Image, bar: &'a Bar) -> Vec<Layer<'a>> {
    image
        .layers
        .iter()
        .map(|info| Layer {
            name: info.digest.to_string(),
            open: Box::new(move || {
                let blob = store
                    .open_blob(&info.digest)
                    .map_err(std::io::Error::other)?;
                let counted = Counted {
                    inner: blob,
                    bar: bar.clone(),
                };
                let verified = BufReader::with_capacity(
                    READ_BUFFER,
                    VerifyingReader::new(counted, info.digest.clone(), info.size),
                );
                // Decompression and the digest check run on a thread of their
                // own, beside the flatten and the image writer.
                Ok(match info.compression {
                    Compression::None => Box::new(ReadAhead::new(verified)) as Box<dyn Read + 'a>,
                    Compression::Gzip => Box::new(ReadAhead::new(
                        flate2::bufread::MultiGzDecoder::new(verified),
                    )),
                    Compression::Zstd => Box::new(ReadAhead::new(
                        zstd::stream::read::Decoder::with_buffer(verified)?,
                    )),
                })
            }),
        })
        .collect()
}

/// Moves the write bar as layer blobs are read.
struct Counted<R> {
    inner: R,
    bar: Bar,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.advance(n as u64);
        Ok(n)
    }
}

/// The sha256 of a (sparse) file: holes are hashed as the zeros they read
/// as, without reading them.
fn file_sha256(path: &Path) -> Result<String> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let zeros = vec![0u8; READ_BUFFER];
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: lseek on an open descriptor; no memory is involved.
        let data = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        let data = if data < 0 { len } else { data as u64 };
        while pos < data {
            let n = ((data - pos) as usize).min(zeros.len());
            hash.update(&zeros[..n]);
            pos += n as u64;
        }
        if pos >= len {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            len
        } else {
            (hole as u64).min(len)
        };
        while pos < hole {
            let want = ((hole - pos) as usize).min(buf.len());
            let n = file
                .read_at(&mut buf[..want], pos)
                .context("reading the image back for its checksum")?;
            if n == 0 {
                anyhow::bail!("the image shrank while it was being checksummed");
            }
            hash.update(&buf[..n]);
            pos += n as u64;
        }
    }
    Ok(Digest::of_hasher(hash).hex().to_string())
}

/// Resolves the image against the registry (always: the manifest says what
/// the tag is now) and brings every blob it needs into the cache.
fn pull(
    registry: &Registry,
    cache: &BlobCache,
    r: &ImageRef,
    platform: &Platform,
) -> Result<Image> {
    let reference = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let (top, digest) = registry.manifest(&reference)?;
    let image = builderd_oci::resolve(top, digest, platform, &mut |d, size, doc| match doc {
        Doc::Manifest => {
            let (bytes, _) = registry.manifest(d.as_str())?;
            d.verify(&bytes, size)?;
            Ok(bytes)
        }
        Doc::Config => {
            fetch_to_cache(registry, cache, d, size, &|_| {})?;
            let bytes = std::fs::read(cache.path(d)).map_err(|e| builderd_oci::Error::Io {
                what: format!("cache: blob {d}"),
                source: e,
            })?;
            d.verify(&bytes, size)?;
            Ok(bytes)
        }
    })?;
    download_layers(registry, cache, &image)?;
    Ok(image)
}

fn fetch_to_cache(
    registry: &Registry,
    cache: &BlobCache,
    digest: &Digest,
    size: u64,
    progress: &dyn Fn(u64),
) -> Result<bool, builderd_oci::Error> {
    cache.fetch(digest, size, |partial| {
        registry.download(digest, size, partial, progress)
    })
}

/// Downloads the layers not cached yet, several at once; a bar for each on a
/// terminal, a line for each otherwise.
fn download_layers(registry: &Registry, cache: &BlobCache, image: &Image) -> Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Bytes fetched of each layer, for the progress events.
    let fetched: Vec<std::sync::atomic::AtomicU64> = image
        .layers
        .iter()
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect();
    let total: u64 = image.layers.iter().map(|l| l.size).sum();
    let report = || {
        let done = fetched
            .iter()
            .map(|f| f.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        events::progress("downloading", done, total, 0, false);
    };
    let failure: std::sync::Mutex<Option<builderd_oci::Error>> = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..DOWNLOADS.min(image.layers.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(layer) = image.layers.get(i) else {
                    break;
                };
                if failure.lock().unwrap().is_some() {
                    break;
                }
                let short = &layer.digest.hex()[..12];
                let bar = bars.add(indicatif::ProgressBar::new(layer.size));
                bar.set_style(style.clone());
                bar.set_message(format!("layer {short}"));
                let started = Instant::now();
                match fetch_to_cache(registry, cache, &layer.digest, layer.size, &|done| {
                    bar.set_position(done);
                    fetched[i].store(done, std::sync::atomic::Ordering::Relaxed);
                    report();
                }) {
                    Ok(was_fetched) => {
                        fetched[i].store(layer.size, std::sync::atomic::Ordering::Relaxed);
                        report();
                        bar.finish_and_clear();
                        if !terminal {
                            let what = if was_fetched {
                                format!("downloaded in {:.2} s", started.elapsed().as_secs_f64())
                            } else {
                                "cached".to_string()
                            };
                            events::info(&format!(
                                "layer {} ({}): {what}",
                                layer.digest,
                                human(layer.size)
                            ));
                        }
                    }
                    Err(e) => {
                        bar.abandon();
                        failure.lock().unwrap().get_or_insert(e);
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
