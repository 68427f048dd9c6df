//! `builderd mkfs SOURCE -o OUT`: a directory or tar archive to an ext4 image.

use std::io::IsTerminal;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use builderd_ext4::{Free, Options, Writer};

use crate::progress::Bar;
use crate::units::{human, parse_bytes, parse_free, parse_uuid};

#[derive(clap::Args)]
pub struct Args {
    /// A directory, or a tar archive (plain, gzip or zstd).
    source: PathBuf,
    /// The image to write (replaced atomically; nothing is left on failure).
    #[arg(short, long)]
    output: PathBuf,
    /// Fixed filesystem size, e.g. 2G (a multiple of 4096); an error if the
    /// content does not fit. Default: the content plus --free.
    #[arg(long, value_parser = parse_bytes)]
    size: Option<u64>,
    /// Free space to leave when sizing to the content: bytes (64M) or a
    /// percentage of the filesystem (20%). Default: 5%, at least 1 MiB.
    #[arg(long, value_parser = parse_free, conflicts_with = "size")]
    free: Option<Free>,
    /// Volume label (up to 16 bytes).
    #[arg(long, default_value = "")]
    label: String,
    /// Filesystem UUID; by default derived from the content, so the same tree
    /// gives the same image.
    #[arg(long, value_parser = parse_uuid)]
    uuid: Option<[u8; 16]>,
    /// No journal (for read-only images).
    #[arg(long)]
    no_journal: bool,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let fs_time = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Some(
            v.trim()
                .parse::<i64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        ),
        Err(_) => None,
    };
    let opts = Options {
        size: args.size,
        free: args.free.unwrap_or_default(),
        label: args.label.clone(),
        uuid: args.uuid,
        journal: !args.no_journal,
        fs_time,
    };
    let source_meta = std::fs::metadata(&args.source)
        .with_context(|| format!("{}: cannot read the source", args.source.display()))?;
    let out_dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out_name = args
        .output
        .file_name()
        .with_context(|| format!("{}: not a file name", args.output.display()))?;
    if args.output.is_dir() {
        bail!(
            "{}: is a directory; give the image's file name",
            args.output.display()
        );
    }
    // Written beside the target and renamed over it only when complete.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", out_name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(&out_dir)
        .with_context(|| format!("{}: cannot create the image there", out_dir.display()))?;
    let mut writer = Writer::new(tmp.as_file().try_clone()?, opts)?;

    let terminal = std::io::stderr().is_terminal();
    let bar = if source_meta.is_dir() {
        let total = if terminal {
            tree_bytes(&args.source)
        } else {
            0
        };
        let bar = Bar::new(total, "reading");
        builderd_import::import_dir(&args.source, &mut writer, &bar)?;
        bar
    } else {
        let bar = Bar::new(source_meta.len(), "reading");
        builderd_import::import_tar(&args.source, &mut writer, &bar)?;
        bar
    };
    bar.finish();
    let (summary, file) = writer.finish()?;
    file.sync_all().context("flushing the image to disk")?;
    drop(file);
    let image = tmp
        .persist(&args.output)
        .with_context(|| format!("{}: cannot put the image in place", args.output.display()))?;
    image.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    let allocated = image.metadata()?.blocks() * 512;
    println!(
        "wrote {}: {} entries ({} inodes), {} of file data; image {} ({} allocated, {} free); {:.2} s",
        args.output.display(),
        summary.entries,
        summary.inodes,
        human(summary.file_bytes),
        human(summary.image_bytes()),
        human(allocated),
        human(summary.free_blocks * builderd_ext4::BLOCK_SIZE as u64),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Bytes of regular-file data under `dir`, for the progress bar's total.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.blocks() * 512,
                _ => {}
            }
        }
    }
    total
}
