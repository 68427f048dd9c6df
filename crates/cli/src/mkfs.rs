//! `builderd mkfs SOURCE -o OUT`: a directory or tar archive to an ext4 image.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use builderd_ext4::Writer;

use crate::ext4_args::Ext4Args;
use crate::progress::Bar;
use crate::units::human;
use builderd_build::Pending;

#[derive(clap::Args)]
pub struct Args {
    /// A directory, or a tar archive (plain, gzip or zstd).
    source: PathBuf,
    /// The image to write (replaced atomically; nothing is left on failure).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    ext4: Ext4Args,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let opts = args.ext4.options()?;
    let source_meta = std::fs::metadata(&args.source)
        .with_context(|| format!("{}: cannot read the source", args.source.display()))?;
    let pending = Pending::new(&args.output)?;
    let mut writer = Writer::new(pending.file()?, opts)?;

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
    drop(file);
    let image = pending.commit()?;
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
