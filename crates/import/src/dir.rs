//! A directory on the host, walked in name order without following symlinks.
//! Sparse files are read by their data segments (SEEK_DATA/SEEK_HOLE), so a
//! 5 GiB file with a few blocks of data costs a few blocks of reading.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use builderd_ext4::{DeviceKind, Metadata, Timestamp, Writer, Xattr};

use crate::{Error, Progress};

const CHUNK: usize = 1 << 20;

/// Adds everything under `root` (and `root`'s own metadata, as the image's
/// root directory) to `w`.
pub fn import_dir(root: &Path, w: &mut Writer, progress: &dyn Progress) -> Result<(), Error> {
    let meta = fs::symlink_metadata(root).map_err(|e| Error::io(root.as_os_str().as_bytes(), e))?;
    if !meta.is_dir() {
        return Err(Error::invalid(
            root.as_os_str().as_bytes(),
            "is not a directory",
        ));
    }
    w.mkdir(b"", metadata(root, &meta)?)?;
    let mut walk = Walk {
        w,
        progress,
        links: HashMap::new(),
        buf: vec![0; CHUNK],
        bytes: 0,
        entries: 0,
    };
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)
            .and_then(|it| {
                it.map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| Error::io(dir.as_os_str().as_bytes(), e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut subdirs = Vec::new();
        for name in names {
            let host = dir.join(&name);
            let mut path = rel.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            if walk.entry(&host, &path)? {
                subdirs.push((host, path));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

struct Walk<'a> {
    w: &'a mut Writer,
    progress: &'a dyn Progress,
    /// First path seen for each multiply-linked (device, inode).
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    bytes: u64,
    entries: u64,
}

impl Walk<'_> {
    /// Adds one entry; true if it is a directory to descend into.
    fn entry(&mut self, host: &Path, path: &[u8]) -> Result<bool, Error> {
        let hostb = host.as_os_str().as_bytes();
        let st = fs::symlink_metadata(host).map_err(|e| Error::io(hostb, e))?;
        let ft = st.file_type();
        self.entries += 1;
        if !ft.is_dir() && st.nlink() > 1 {
            if let Some(first) = self.links.get(&(st.dev(), st.ino())) {
                self.w.hardlink(path, first)?;
                return Ok(false);
            }
            self.links.insert((st.dev(), st.ino()), path.to_vec());
        }
        let meta = metadata(host, &st)?;
        if ft.is_dir() {
            self.w.mkdir(path, meta)?;
            return Ok(true);
        } else if ft.is_file() {
            self.copy_file(host, path, meta, st.len())?;
        } else if ft.is_symlink() {
            let target = fs::read_link(host).map_err(|e| Error::io(hostb, e))?;
            self.w.symlink(path, target.as_os_str().as_bytes(), meta)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                DeviceKind::Char
            } else {
                DeviceKind::Block
            };
            let rdev = st.rdev();
            self.w
                .device(path, kind, libc::major(rdev), libc::minor(rdev), meta)?;
        } else if ft.is_fifo() {
            self.w.fifo(path, meta)?;
        } else if ft.is_socket() {
            self.w.socket(path, meta)?;
        }
        self.progress.update(self.bytes, self.entries);
        Ok(false)
    }

    /// Copies a file's data segments; holes stay holes.
    fn copy_file(
        &mut self,
        host: &Path,
        path: &[u8],
        meta: Metadata,
        size: u64,
    ) -> Result<(), Error> {
        let hostb = host.as_os_str().as_bytes();
        let file = File::open(host).map_err(|e| Error::io(hostb, e))?;
        let mut out = self.w.file(path, meta)?;
        let mut pos = 0u64;
        while pos < size {
            let Some((data, hole)) =
                next_segment(&file, pos, size).map_err(|e| Error::io(hostb, e))?
            else {
                break;
            };
            out.skip(data - pos)?;
            let mut at = data;
            while at < hole {
                let want = ((hole - at) as usize).min(self.buf.len());
                let n = file
                    .read_at(&mut self.buf[..want], at)
                    .map_err(|e| Error::io(hostb, e))?;
                if n == 0 {
                    return Err(Error::invalid(hostb, "shrank while it was being read"));
                }
                out.write(&self.buf[..n])?;
                at += n as u64;
                self.bytes += n as u64;
            }
            pos = hole;
            self.progress.update(self.bytes, self.entries);
        }
        out.skip(size - pos)?;
        out.finish()?;
        Ok(())
    }
}

/// The next data segment at or after `pos`: (start, end), or None when only a
/// hole remains. Filesystems without SEEK_DATA report one segment.
fn next_segment(file: &File, pos: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on a file descriptor we own; no memory is touched.
    let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) => Ok(Some((pos, size))),
            _ => Err(err),
        };
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    if hole < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((data as u64, (hole as u64).min(size))))
}

fn metadata(host: &Path, st: &fs::Metadata) -> Result<Metadata, Error> {
    let hostb = host.as_os_str().as_bytes();
    let mut xattrs = Vec::new();
    let names = match xattr::list(host) {
        Ok(names) => names.collect::<Vec<_>>(),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        Err(e) => return Err(Error::io(hostb, e)),
    };
    for name in names {
        if let Some(value) = xattr::get(host, &name).map_err(|e| Error::io(hostb, e))? {
            xattrs.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            });
        }
    }
    // The host's atime changes as we read the tree and its ctime records
    // inode changes on the build host: both would make two builds of one tree
    // differ, so the image takes both from the mtime.
    let mtime = Timestamp::new(st.mtime(), st.mtime_nsec() as u32);
    Ok(Metadata {
        mode: (st.mode() & 0o7777) as u16,
        uid: st.uid(),
        gid: st.gid(),
        atime: mtime,
        mtime,
        ctime: mtime,
        xattrs,
    })
}
