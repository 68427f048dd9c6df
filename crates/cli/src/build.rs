//! `builderd build SOURCE -o OUT.ext4`: a container image to an ext4 root
//! filesystem in one pass (layers flattened newest first, file data straight
//! into the image), with a metadata file `OUT.json` beside it.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use builderd_ext4::Writer;
use builderd_flatten::Layer;
use builderd_oci::{Compression, Image, OciLayout, Platform, Source, VerifyingReader};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::ext4_args::Ext4Args;
use crate::output::Pending;
use crate::units::human;

#[derive(clap::Args)]
pub struct Args {
    /// The image: oci:DIR[:TAG] (an OCI image layout). Registry references
    /// (docker://REF), oci-archive: and docker-archive: are not implemented
    /// yet.
    source: String,
    /// The image file to write; its metadata goes to OUT.json.
    #[arg(short, long)]
    output: PathBuf,
    /// The platform to pick from a multi-platform image (os/arch[/variant]);
    /// default: this machine's.
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    ext4: Ext4Args,
}

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
    image: ImageInfo,
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
    total: u128,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let source = Source::parse(&args.source)?;
    let (layout, tag) = match source {
        Source::OciLayout { dir, tag } => (OciLayout::open(&dir)?, tag),
        Source::Registry(r) => bail!("pulling from a registry ({r}) is not implemented yet; use an OCI layout: skopeo copy docker://{r} oci:DIR:TAG, then builderd build oci:DIR:TAG"),
        Source::OciArchive { .. } => bail!("oci-archive: sources are not implemented yet; unpack the archive and use oci:DIR[:TAG]"),
        Source::DockerArchive { .. } => bail!("docker-archive: sources are not implemented yet"),
    };
    let image = layout.resolve(tag.as_deref(), &platform)?;
    let resolved = Instant::now();
    eprintln!(
        "builderd: {}: manifest {}, {} layers, {}",
        args.source,
        image.manifest_digest,
        image.layers.len(),
        human(image.layers.iter().map(|l| l.size).sum())
    );

    let json_path = metadata_path(&args.output);
    let pending = Pending::new(&args.output)?;
    let pending_json = Pending::new(&json_path)?;
    let mut writer = Writer::new(pending.file()?, args.ext4.options()?)?;
    let layers = layers(&layout, &image);
    let stats = builderd_flatten::flatten(&layers, &mut writer, &|layer| {
        eprintln!("builderd: layer {} done", layer.name)
    })?;
    let flattened = Instant::now();
    let (summary, file) = writer.finish()?;
    drop(file);
    let finished = Instant::now();
    let sha256 = file_sha256(pending.path())?;
    let checksummed = Instant::now();

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
            total: ms(started, Instant::now()),
        },
    };
    serde_json::to_writer_pretty(pending_json.file()?, &meta)?;
    pending.commit()?;
    if let Err(e) = pending_json.commit() {
        let _ = std::fs::remove_file(&args.output);
        return Err(e);
    }
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
fn layers<'a>(layout: &'a OciLayout, image: &'a Image) -> Vec<Layer<'a>> {
    image
        .layers
        .iter()
        .map(|info| Layer {
            name: info.digest.to_string(),
            open: Box::new(move || {
                let blob = layout
                    .open_blob(&info.digest)
                    .map_err(std::io::Error::other)?;
                let verified = BufReader::with_capacity(
                    READ_BUFFER,
                    VerifyingReader::new(blob, info.digest.clone(), info.size),
                );
                Ok(match info.compression {
                    Compression::None => Box::new(verified) as Box<dyn Read + 'a>,
                    Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(verified)),
                    Compression::Zstd => {
                        Box::new(zstd::stream::read::Decoder::with_buffer(verified)?)
                    }
                })
            }),
        })
        .collect()
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = file
            .read(&mut buf)
            .context("reading the image back for its checksum")?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
