//! One build, as the list of stages it is: resolve the source, flatten its
//! layers into the ext4 writer as they arrive, add what makes it boot,
//! finish the filesystem, checksum it, compress a copy, commit the image and
//! its metadata. Nothing is left behind on failure: every output is written
//! beside its final name and renamed into place only at the end.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use builderd_ext4::Writer;
use builderd_oci::{BlobCache, Digest, Image, LayerInfo, Platform};

use crate::blob_checks::{BlobChecks, Failed};
use crate::event::{self, Event, Progress, Reporter, Stage};
use crate::layer_streams::{Blob, Streams};
use crate::output::Pending;
use crate::report::{CompressedInfo, FlattenInfo, ImageInfo, LayerDiskInfo, Report, Timings};
use crate::request::{BootOptions, BuildRequest, CopyFormat};
use crate::source::{self, Blobs, Opened};
use crate::steps::{self, BlobAt};
use crate::tree_layer::TreeLayer;
use crate::units::{count, human};
use crate::{Error, Limit, SizeLimitExceeded, SourceError};
use builderd_archive::Extracted;

/// How often the writing's progress is told.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs the build `req` describes, telling `reporter` how it goes; answers
/// what it made (also written to OUT.json beside the image).
pub fn build(req: &BuildRequest, reporter: &dyn Reporter) -> Result<Report, Error> {
    run(req, reporter).map_err(|e| Error::of(&e))
}

fn run(req: &BuildRequest, reporter: &dyn Reporter) -> Result<Report> {
    let started = Instant::now();
    reporter.report(Event::Stage(Stage::Preparing));
    let platform = match &req.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    // The registry's downloads run on a thread of this scope, beside the
    // flatten, so that both may tell `reporter`.
    std::thread::scope(|scope| {
        let opened = source::open(scope, req, &platform, reporter)?;
        let source_commit = opened.commit();
        let mut archive = opened.archive.clone();
        let generated = opened.generated();
        let resolved = Instant::now();
        let image = &opened.image;
        event::info(
            reporter,
            format!(
                "{}: manifest {}, {}, {}",
                req.source,
                image.manifest_digest,
                count(image.layers.len() as u64, "layer"),
                human(image.layers.iter().map(|l| l.size).sum())
            ),
        );
        // The request is checked before the long part.
        let plan = crate::boot::plan(&req.boot, &image.run)?;
        let mut outputs = Outputs::new(&req.output, req.boot.compression)?;
        let mut stepped = run_steps(&opened, req, reporter)?;
        let steps_ended = Instant::now();
        let limit = image_limit(&req.boot);
        let mut writer = Writer::new(
            outputs.image.file()?,
            req.ext4
                .writer_options(limit.as_ref().map(|(bytes, _)| *bytes)),
        )?;
        let mut policy = crate::policy::new(&req.policy, &plan.run.env)?;
        let layered = match req.layers.preserve {
            true => Some(LayerJob {
                store: crate::layer_store::Store::open(&match &req.layers.store {
                    Some(dir) => dir.clone(),
                    None => BlobCache::default_dir().join("layers"),
                })?,
                identity: crate::policy::identity(&req.policy, &plan.run.env)?,
                epoch: req.ext4.fs_time,
            }),
            false => None,
        };
        let (stats, checks, mut converted) = flatten(
            opened,
            stepped.as_ref(),
            &mut policy,
            &mut writer,
            layered.as_ref(),
            reporter,
            &limit,
        )?;
        if let (Some(info), Some(read)) = (&mut archive, &stats.archive_read) {
            info.counted(read);
        }
        let mut plan = plan;
        let storing = match (&mut converted, &layered) {
            (Some(c), Some(job)) => c
                .unstored
                .take()
                .map(|u| u.store(job.store.clone(), c.tree.clone())),
            _ => None,
        };
        let (policy_report, installed, layer_disks) = match &converted {
            None => {
                let policy_report = finish_policy(policy, &mut writer, &mut plan, reporter)?;
                let installed = builderd_rootfs::install(&mut writer, &plan)?;
                (policy_report, installed, None)
            }
            Some(c) => {
                let n = c.disks.len();
                let time = req.ext4.fs_time.unwrap_or_else(|| c.time());
                crate::layered::start_top(&mut writer, &c.tree, n, time)?;
                let mut top = crate::layered::Top {
                    w: &mut writer,
                    tree: &c.tree,
                    time,
                };
                crate::layered::imply_dirs(&mut top)?;
                let policy_report = finish_policy(policy, &mut top, &mut plan, reporter)?;
                let mut installed = builderd_rootfs::install(&mut top, &plan)?;
                crate::layered::finish_top(&mut writer, n, &installed.init, time)?;
                // The kernel starts the top disk's stage, which starts the
                // image's init in the overlay.
                installed.kernel_cmdline =
                    builderd_rootfs::kernel_cmdline(builderd_init::INIT_PATH);
                outputs.layers = c
                    .disks
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let store = &layered.as_ref().expect("layers were kept").store;
                        (layer_path(&req.output, i), store.disk(&d.stored.key))
                    })
                    .collect();
                let infos = c
                    .disks
                    .iter()
                    .zip(&outputs.layers)
                    .map(|(d, (file, _))| LayerDiskInfo {
                        file: file.display().to_string(),
                        disk: d.stored.disk.clone(),
                        converted: d.converted,
                    })
                    .collect();
                (policy_report, installed, Some(infos))
            }
        };
        for w in &installed.warnings {
            event::warn(reporter, w);
        }
        let flattened = Instant::now();
        reporter.report(Event::Stage(Stage::Optimizing));
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
        reporter.report(Event::Stage(Stage::Packaging));
        let sha256 = checksum(&outputs.image, checks, stats.cache.as_deref())?;
        // The image is whole and its blobs checked.
        if let Some(done) = &mut stepped {
            done.keep_base();
        }
        let checksummed = Instant::now();
        let compressed = compress(&outputs, req.boot.compression)?;
        let times = Times {
            started,
            resolved,
            steps: stepped.as_ref().map(|_| steps_ended),
            flattened,
            finished,
            checksummed,
            compressed: Instant::now(),
        };
        let allocated = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(outputs.image.path())?.blocks() * 512
        };
        let report = Report {
            builderd_version: env!("CARGO_PKG_VERSION"),
            source: req.source.clone(),
            source_commit,
            generated,
            archive,
            manifest_digest: stats.image.manifest_digest.to_string(),
            manifest_media_type: stats.image.manifest_media_type.clone(),
            config_digest: stats.image.config_digest.to_string(),
            platform: stats.image.platform.to_string(),
            layers: stats.image.layers.clone(),
            config: stats.image.run.clone(),
            init_strategy: plan.strategy.enum_name(),
            kernel_cmdline: installed.kernel_cmdline,
            run_config: plan.run,
            image: ImageInfo {
                file: req.output.display().to_string(),
                sha256,
                size_bytes: summary.image_bytes(),
                allocated_bytes: allocated,
                inodes: summary.inodes,
                file_data_bytes: summary.file_bytes,
            },
            flatten: FlattenInfo {
                entries_written: stats.counts.written,
                entries_masked: stats.counts.masked,
                whiteouts: stats.counts.whiteouts,
                hardlinks_fixed: stats.counts.links_fixed,
            },
            steps: stepped.map(|done| done.info(req.steps.network)),
            policy: policy_report,
            layer_disks,
            timings_ms: times.timings(),
            compressed,
        };
        if let Some(storing) = storing {
            storing
                .join()
                .expect("the layer store's thread does not panic")
                .context("storing the last layer's disk")?;
        }
        outputs.commit(&report)?;
        reporter.report(Event::Progress(Progress {
            step: "written".into(),
            done: summary.image_bytes(),
            total: summary.image_bytes(),
            files: stats.counts.written,
        }));
        Ok(report)
    })
}

/// Where kept layers go, and the policy's identity (part of their keys).
struct LayerJob {
    store: crate::layer_store::Store,
    identity: String,
    epoch: Option<i64>,
}

/// Writes what the policy rewrote into `target` and tells the boot plan
/// whether the VM makes its own SSH host keys.
fn finish_policy(
    policy: Option<builderd_policy::Policy>,
    target: &mut dyn builderd_ext4::Target,
    plan: &mut builderd_rootfs::Plan,
    reporter: &dyn Reporter,
) -> Result<Option<builderd_policy::Report>> {
    let report = policy
        .map(|p| crate::policy::finish(p, target, reporter))
        .transpose()?;
    plan.regenerate_ssh_host_keys = report
        .as_ref()
        .is_some_and(|r| r.ssh_host_keys_regenerated_at_boot);
    Ok(report)
}

/// When each stage ended.
struct Times {
    started: Instant,
    resolved: Instant,
    /// When the build steps ended, if there were any.
    steps: Option<Instant>,
    flattened: Instant,
    finished: Instant,
    checksummed: Instant,
    compressed: Instant,
}

impl Times {
    fn timings(&self) -> Timings {
        let ms = |a: Instant, b: Instant| b.duration_since(a).as_millis();
        let flatten_from = self.steps.unwrap_or(self.resolved);
        Timings {
            resolve: ms(self.started, self.resolved),
            steps: self.steps.map(|ended| ms(self.resolved, ended)),
            flatten: ms(flatten_from, self.flattened),
            finish: ms(self.flattened, self.finished),
            checksum: ms(self.finished, self.checksummed),
            compress: ms(self.checksummed, self.compressed),
            total: ms(self.started, Instant::now()),
        }
    }
}

/// The image, its metadata and its compressed copy, each written beside
/// its final name until `commit`.
struct Outputs {
    image: Pending,
    metadata: Pending,
    /// The compressed copy's final name and its file.
    copy: Option<(PathBuf, Pending)>,
    /// Kept layers: each disk's name beside the image, and its stored file.
    layers: Vec<(PathBuf, PathBuf)>,
}

impl Outputs {
    fn new(output: &Path, compression: CopyFormat) -> Result<Outputs> {
        let copy = crate::compress::path_for(output, compression)
            .map(|path| Pending::new(&path).map(|pending| (path, pending)))
            .transpose()?;
        Ok(Outputs {
            image: Pending::new(output)?,
            metadata: Pending::new(&metadata_path(output))?,
            copy,
            layers: Vec::new(),
        })
    }

    /// The metadata goes last: while it is missing, the build is not done.
    /// A failure on the way removes what was put in place.
    fn commit(self, report: &Report) -> Result<()> {
        serde_json::to_writer_pretty(self.metadata.file()?, report)?;
        let mut committed = Vec::new();
        let image = self.image.target().to_path_buf();
        let result =
            link_layers(&self.layers, &mut committed).and_then(|()| self.image.commit().map(drop));
        committed.push(image);
        let result = result
            .and_then(|()| match self.copy {
                Some((path, p)) => p.commit().map(|_| committed.push(path)),
                None => Ok(()),
            })
            .and_then(|()| self.metadata.commit().map(drop));
        if result.is_err() {
            for path in committed {
                let _ = std::fs::remove_file(path);
            }
        }
        result
    }
}

/// Puts each kept layer's stored disk beside the image: a hard link (the
/// store's copy is the only one), or a copy across filesystems.
fn link_layers(layers: &[(PathBuf, PathBuf)], committed: &mut Vec<PathBuf>) -> Result<()> {
    for (target, stored) in layers {
        let tmp = Pending::new(target)?;
        let at = tmp.path().to_path_buf();
        std::fs::remove_file(&at)?;
        if std::fs::hard_link(stored, &at).is_err() {
            std::fs::copy(stored, &at)
                .with_context(|| format!("copying {} to {}", stored.display(), at.display()))?;
        }
        std::fs::rename(&at, target)
            .with_context(|| format!("{}: cannot put it in place", target.display()))?;
        committed.push(target.clone());
    }
    Ok(())
}

/// The name of a kept layer's disk beside the image: `rootfs.ext4` →
/// `rootfs.layer-0.ext4` (the image's first layer).
pub fn layer_path(output: &Path, n: usize) -> PathBuf {
    let name = output.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".ext4").unwrap_or(&name);
    output.with_file_name(format!("{stem}.layer-{n}.ext4"))
}

/// `rootfs.ext4` → `rootfs.ext4.json`.
fn metadata_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".json");
    PathBuf::from(name)
}

/// Runs the request's build steps, if any, over the opened image, once its
/// blobs are all here; answers the layer they made.
fn run_steps(
    opened: &Opened<'_>,
    req: &BuildRequest,
    reporter: &dyn Reporter,
) -> Result<Option<steps::Done>> {
    if req.steps.commands.is_empty() {
        return Ok(None);
    }
    let image = &opened.image;
    let (config, layers) = match &opened.blobs {
        Blobs::Local(store) => {
            let at = |d: &Digest| -> Result<BlobAt> {
                Ok(match store.blob_path(d) {
                    Some(path) => BlobAt::File(path),
                    None => BlobAt::Stream(store.open_blob(d)?),
                })
            };
            let layers = image.layers.iter().map(|l| at(&l.digest));
            (at(&image.config_digest)?, layers.collect::<Result<_>>()?)
        }
        Blobs::Pull(downloads) => {
            let cache = opened
                .cache
                .as_ref()
                .expect("a registry source has a cache");
            for i in 0..image.layers.len() {
                downloads.wait(i).map_err(|e| SourceError(e.to_string()))?;
            }
            let at = |d: &Digest| BlobAt::File(cache.path(d));
            let layers = image.layers.iter().map(|l| at(&l.digest)).collect();
            (at(&image.config_digest), layers)
        }
    };
    let storage = req
        .steps
        .storage
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::request::DEFAULT_STEPS_DIR));
    // The inner build of a microVM's rootfs tells nothing of its own.
    let done = steps::run(
        image,
        config,
        layers,
        &req.steps,
        &steps::Setting {
            storage: &storage,
            epoch: req.ext4.fs_time,
            reporter,
            build_rootfs: &|r| Ok(build(r, &event::Quiet)?),
        },
    )?;
    Ok(Some(done))
}

/// What the flatten did, the image it did it from, and the blob cache it
/// read from (a blob that fails its check then leaves it).
struct Flattened {
    image: Image,
    counts: builderd_flatten::Stats,
    cache: Option<Arc<BlobCache>>,
    /// An archive read straight into the image, as it was read.
    archive_read: Option<Extracted>,
}

/// Flattens the opened source's layers into `writer` as they arrive;
/// answers what it did and the digest checks still running (for blobs not
/// checked by their download). Content past `limit` fails as that limit.
fn flatten(
    opened: Opened<'_>,
    stepped: Option<&steps::Done>,
    policy: &mut Option<builderd_policy::Policy>,
    writer: &mut Writer,
    layered: Option<&LayerJob>,
    reporter: &dyn Reporter,
    limit: &Option<(u64, Limit)>,
) -> Result<(Flattened, BlobChecks, Option<crate::layered::Converted>)> {
    let built = opened.built_layers();
    let Opened {
        image,
        blobs,
        cache,
        tree,
        ..
    } = opened;
    // The steps' layers go over the image's own, or are the image.
    let step_layers = stepped.map_or(Ok(Vec::new()), steps::Done::layer_infos)?;
    let base_layers = match stepped {
        Some(done) if done.replaces_base() => 0,
        _ => image.layers.len(),
    };
    // An archive's files with nothing to build go over all of it.
    let all_layers: Vec<LayerInfo> = image.layers[..base_layers]
        .iter()
        .chain(&step_layers)
        .chain(tree.as_ref().map(|t| &t.info))
        .cloned()
        .collect();
    let tree_index = base_layers + step_layers.len();
    let total: u64 = all_layers.iter().map(|l| l.size).sum();
    // A local source has nothing to download: it is building from the start.
    if matches!(blobs, Blobs::Local(_)) {
        reporter.report(Event::Stage(Stage::Building));
    }
    let read = Arc::new(AtomicU64::new(0));
    let done = std::sync::atomic::AtomicBool::new(false);
    let (flattened, checks) = std::thread::scope(|scope| {
        // How far the writing is, told every `PROGRESS_EVERY` while it runs.
        let ticker = scope.spawn(|| {
            let tell = || {
                reporter.report(Event::Progress(Progress {
                    step: "writing".into(),
                    done: read.load(Ordering::Relaxed),
                    total,
                    files: 0,
                }))
            };
            while !done.load(Ordering::Relaxed) {
                tell();
                std::thread::park_timeout(PROGRESS_EVERY);
            }
            tell();
        });
        let open_blob = |i: usize| match (&blobs, &tree) {
            (_, Some(tree)) if i == tree_index => Ok(Blob {
                reader: tree.open()?,
                // Made here, from the extracted files.
                verified: true,
            }),
            _ if i >= base_layers => Ok(Blob {
                reader: Box::new(std::fs::File::open(
                    &stepped.expect("step layers come from steps").layers[i - base_layers],
                )?),
                // The step engine's own output, named by its digest.
                verified: true,
            }),
            (Blobs::Local(store), _) => Ok(Blob {
                reader: store
                    .open_blob(&image.layers[i].digest)
                    .map_err(std::io::Error::other)?,
                verified: false,
            }),
            (Blobs::Pull(downloads), _) => Ok(downloads.open(i)),
        };
        let streams = Streams::new(&all_layers, &open_blob, read.clone());
        let mut layers = streams.layers();
        // What the step engine built of a project's image was written in
        // its user namespace.
        if base_layers == image.layers.len() {
            for layer in &mut layers[base_layers - built..base_layers] {
                layer.adjust = Some(steps::built_layer_adjust());
            }
        }
        if let Some(done) = stepped {
            for layer in &mut layers[base_layers..] {
                layer.adjust = Some(done.adjust.clone());
            }
        }
        let flattened = crate::policy::read(policy, &layers, reporter).and_then(|read| {
            let select = policy.as_ref().map(|p| p as &dyn builderd_flatten::Select);
            let Some(job) = layered else {
                return builderd_flatten::flatten(&layers, writer, select, &|layer| {
                    event::info(reporter, format!("layer {} written", layer.name))
                })
                .map(|stats| (stats, None));
            };
            let digests: Vec<String> = all_layers.iter().map(|l| l.digest.to_string()).collect();
            let identity = format!("{}:{read}", job.identity);
            // A layer made under a user namespace is adjusted by the
            // image's creation time or the build's epoch.
            let adjusted_as = format!(
                "adjusted: config {}, epoch {:?}",
                image.config_digest, job.epoch
            );
            let keyed = crate::layered::Keyed {
                policy: &identity,
                adjusted: &adjusted_as,
            };
            crate::layered::convert(&layers, &digests, &job.store, select, &keyed, reporter)
                .map(|c| (c.stats.clone(), Some(c)))
        });
        drop(layers);
        done.store(true, Ordering::Relaxed);
        ticker.thread().unpark();
        (flattened, streams.take_checks())
    });
    // A streamed archive's refusal cut its layer short: the refusal is the
    // error, once the downloads are stopped and the checks joined.
    let (archive_read, refusal) = match tree.as_ref().and_then(TreeLayer::reading) {
        Some(r) => {
            for line in &r.told {
                event::warn(reporter, line);
            }
            match r.result {
                Ok(x) => {
                    event::info(
                        reporter,
                        format!(
                            "{}, read into the image",
                            crate::project::archive::described(&r.archive, &x)
                        ),
                    );
                    (Some(x), None)
                }
                // The pipe broke: the flatten stopped first, and its own
                // error says why.
                Err(builderd_archive::Error::Write(_)) => (None, None),
                Err(e) => (None, Some(crate::project::archive::refused(&r.archive, e))),
            }
        }
        None => (None, None),
    };
    // Content past the limit stopped the writing: say which limit.
    let flattened = flattened.map_err(|e| match limit {
        Some((bytes, which)) if ran_out_of_room(&e) => anyhow::Error::new(SizeLimitExceeded {
            size: None,
            limit: *bytes,
            which: which.clone(),
        }),
        _ => anyhow::Error::new(e),
    });
    let flattened = match (flattened, refusal) {
        (_, Some(refused)) => Err(refused),
        (f, None) => f,
    };
    let refused = |e: &anyhow::Error| e.is::<SourceError>();
    let (counts, converted) = match (flattened, blobs) {
        (Ok(stats), Blobs::Pull(d)) => d.finish().map(|()| stats)?,
        (Ok(stats), Blobs::Local(_)) => stats,
        // A layer that could not be read because its download failed: the
        // download's own error says what happened.
        (Err(e), Blobs::Pull(d)) => match d.abandon() {
            Some(download) if !refused(&e) => return Err(download.into()),
            _ => return Err(joined(e, checks, cache.as_deref())),
        },
        // A blob that is not what its digest says fails to decompress or
        // parse first, more often than not: its check says why.
        (Err(e), Blobs::Local(_)) => return Err(joined(e, checks, cache.as_deref())),
    };
    Ok((
        Flattened {
            image,
            counts,
            cache,
            archive_read,
        },
        checks,
        converted,
    ))
}

/// The flatten's error `e` once the blob checks are joined: a check's
/// failure says more, unless `e` is the archive's own refusal.
fn joined(e: anyhow::Error, checks: BlobChecks, cache: Option<&BlobCache>) -> anyhow::Error {
    let failed_check = checks.join().err();
    match failed_check {
        Some(f) if !e.is::<SourceError>() => failed(f, cache),
        _ => e,
    }
}

/// The image's sha256. Hashing (CPU) and flushing to disk (I/O) overlap,
/// and the blob checks still running get the core the hash leaves idle.
fn checksum(image: &Pending, checks: BlobChecks, cache: Option<&BlobCache>) -> Result<String> {
    std::thread::scope(|scope| {
        let hashing = scope.spawn(|| crate::checksum::sha256(image.path()));
        let flushed = image
            .file()
            .and_then(|f| f.sync_all().context("flushing the image to disk"));
        let sha256 = hashing.join().expect("the hashing thread does not panic");
        let checked = checks.join().map_err(|f| failed(f, cache));
        checked.and(flushed).and(sha256)
    })
}

/// The compressed copy, if one is asked for.
fn compress(outputs: &Outputs, format: CopyFormat) -> Result<Option<CompressedInfo>> {
    let Some((path, pending)) = &outputs.copy else {
        return Ok(None);
    };
    let (sha256, size_bytes) = crate::compress::compress(outputs.image.path(), pending, format)?;
    Ok(Some(CompressedInfo {
        file: path.display().to_string(),
        format: format.name(),
        sha256,
        size_bytes,
    }))
}

/// The lower of the size limit and the tenant's storage left, and which.
fn image_limit(boot: &BootOptions) -> Option<(u64, Limit)> {
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
