//! The host's mount table, read and changed: what the steps' disks and
//! overlays need.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Detaches whatever is mounted at `path` (the loop device goes with the
/// last user of the mount).
pub fn unmount(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: umount2 with a NUL-terminated path that lives across
        // the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Detaches every mount at or below `dir`, deepest first (what a killed
/// build left mounted in its work directory).
pub fn unmount_below(dir: &Path) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        unmount(&p);
    }
}

/// A path as the mount table writes it (space, tab, newline and backslash
/// as octal escapes).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The options of the overlay mounted at `merged`, from the mount table.
pub fn overlay_options(merged: &Path) -> Result<String> {
    let table =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading the mount table")?;
    table
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|p| Path::new(&unescape(p)) == merged)
                && l.contains(" - overlay ")
        })
        .find_map(|l| l.rsplit(' ').next().map(str::to_string))
        .with_context(|| format!("no overlay is mounted at {}", merged.display()))
}

/// Mounts an overlay at `at` with `options`, without device files.
pub fn mount_overlay(at: &Path, options: &str) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |b: &[u8]| std::ffi::CString::new(b).context("a NUL in a mount argument");
    let (target, data) = (c(at.as_os_str().as_bytes())?, c(options.as_bytes())?);
    let kind = c(b"overlay")?;
    // SAFETY: mount(2) with NUL-terminated strings that live across the
    // call.
    let r = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting the base under the container at {}", at.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_paths_are_unescaped() {
        assert_eq!(unescape(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/odd\9"), r"/odd\9");
    }
}
