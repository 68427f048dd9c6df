//! Steps mode: when the kernel command line names a steps' disk, the init
//! runs the steps it holds instead of the app, one after another, and on
//! success writes the root's tree (this filesystem only, without
//! builderd's own files) over that disk as a tar for the host to read:
//! hard links as links, extended attributes (file capabilities) as PAX
//! `SCHILY.xattr.*` records.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
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

/// The extended attributes of `path` (not followed), names and values.
/// Most files have none: one call with no buffer says so.
fn xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path; a null buffer of length 0 asks for the size.
    let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if size <= 0 {
        let e = std::io::Error::last_os_error();
        return match (size, e.raw_os_error()) {
            (0, _) | (_, Some(libc::ENOTSUP)) => Ok(Vec::new()),
            _ => Err(e),
        };
    }
    let mut names = vec![0u8; size as usize];
    // SAFETY: a NUL-terminated path and a buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)?;
        // An xattr value is at most 64 KiB.
        let mut value = vec![0u8; 64 << 10];
        // SAFETY: NUL-terminated path and name, a buffer of the length given.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(std::io::Error::last_os_error());
        }
        value.truncate(len as usize);
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// A PAX extended header whose records give the next entry's xattrs.
fn append_pax<W: Write>(
    tar: &mut tar::Builder<W>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> std::io::Result<()> {
    let mut data = Vec::new();
    for (name, value) in xattrs {
        let mut body = b"SCHILY.xattr.".to_vec();
        body.extend_from_slice(name);
        body.push(b'=');
        body.extend_from_slice(value);
        body.push(b'\n');
        // "LEN KEY=VALUE\n", LEN counting its own digits.
        let mut len = body.len() + 2;
        while format!("{len} ").len() + body.len() != len {
            len = format!("{len} ").len() + body.len();
        }
        data.extend_from_slice(format!("{len} ").as_bytes());
        data.extend_from_slice(&body);
    }
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_path("PaxHeaders/xattrs")?;
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, &data[..])
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
    // The first name of each file with more than one link.
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
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
            let xattrs = xattrs(&path).map_err(fail)?;
            if !xattrs.is_empty() {
                append_pax(&mut tar, &xattrs).map_err(fail)?;
            }
            if meta.is_file() && meta.nlink() > 1 {
                if let Some(first) = linked.get(&(meta.dev(), meta.ino())) {
                    let mut header = tar::Header::new_gnu();
                    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    tar.append_link(&mut header, name, first).map_err(fail)?;
                    continue;
                }
                linked.insert((meta.dev(), meta.ino()), name.to_path_buf());
            }
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
