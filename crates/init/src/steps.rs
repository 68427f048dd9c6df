//! Steps mode: when the kernel command line names a steps' disk, the init
//! runs the steps it holds instead of the app, one after another, and on
//! success writes the root's tree (this filesystem only, without
//! builderd's own files) over that disk as a tar for the host to read.

use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use builderd_init::steps_disk::{self, StepsConfig};
use builderd_init::{RunConfig, DIR};

use crate::{console, supervise};

/// The steps' disk the kernel command line names, if any.
pub fn requested() -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    let key = format!("{}=", steps_disk::CMDLINE_KEY);
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&key).map(str::to_string))
}

/// Runs the steps; answers the first failing step's exit code, or 0 once
/// the tree is written.
pub fn run(app: &RunConfig, disk: &str) -> Result<i32, String> {
    let mut file = std::fs::File::open(disk)
        .map_err(|e| format!("cannot open the steps' disk {disk}: {e}"))?;
    let config: StepsConfig = steps_disk::decode(&mut file)?;
    drop(file);
    for (i, command) in config.commands.iter().enumerate() {
        let step = RunConfig {
            entrypoint: vec!["/bin/sh".into(), "-c".into(), command.clone()],
            cmd: Vec::new(),
            user: config.user.clone().unwrap_or_else(|| app.user.clone()),
            ..app.clone()
        };
        let code = supervise::run_app(&step)?;
        console::say(&steps_disk::step_line(i + 1, code));
        if code != 0 {
            return Ok(code);
        }
    }
    let bytes = write_tree(disk)?;
    console::say(&steps_disk::written_line(bytes));
    Ok(0)
}

/// A writer that counts what goes through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the root's tree to `disk` from its start; answers the tar's size.
fn write_tree(disk: &str) -> Result<u64, String> {
    let fail = |e: std::io::Error| format!("writing the tree to {disk}: {e}");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(fail)?;
    let mut tar = tar::Builder::new(Counted {
        inner: BufWriter::with_capacity(1 << 20, file),
        bytes: 0,
    });
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    let root_dev = std::fs::symlink_metadata("/").map_err(fail)?.dev();
    let mut todo: Vec<PathBuf> = vec![PathBuf::from("/")];
    while let Some(dir) = todo.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(fail)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        entries.sort();
        for path in entries {
            if path == Path::new(DIR) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(fail)?;
            // Another filesystem (proc, sys, dev, a tmpfs): not the image's.
            if meta.dev() != root_dev {
                continue;
            }
            let name = path.strip_prefix("/").expect("under the root");
            tar.append_path_with_name(&path, name).map_err(fail)?;
            if meta.is_dir() {
                todo.push(path);
            }
        }
    }
    let mut out = tar.into_inner().map_err(fail)?;
    out.flush().map_err(fail)?;
    let bytes = out.bytes;
    out.inner
        .into_inner()
        .map_err(|e| fail(e.into_error()))?
        .sync_all()
        .map_err(fail)?;
    Ok(bytes)
}
