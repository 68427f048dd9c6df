//! Writing beneath one directory and nowhere else: every path is resolved
//! by the kernel from the directory's descriptor with `openat2`'s
//! `RESOLVE_BENEATH` and `RESOLVE_NO_SYMLINKS`, so neither `..` nor a link
//! (made by the archive, or by anyone) can lead a write out of it, whatever
//! the checks before it missed.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timestamps};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

pub(crate) struct Beneath {
    root: OwnedFd,
    /// The last parent directory opened, by its path: entries come grouped
    /// by directory.
    parent: Option<(Vec<u8>, OwnedFd)>,
}

impl Beneath {
    pub fn open(dir: &Path) -> io::Result<Beneath> {
        let root = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath { root, parent: None })
    }

    /// Makes `path`'s missing parents, `mode` 0700 until `set_mode`.
    pub fn parents(&mut self, path: &[u8]) -> io::Result<()> {
        for (i, _) in path.iter().enumerate().filter(|(_, &b)| b == b'/') {
            self.mkdir(&path[..i])?;
        }
        Ok(())
    }

    /// Makes the directory `path` (0700 until `set_mode`), if it is not one.
    pub fn mkdir(&mut self, path: &[u8]) -> io::Result<()> {
        let (parent, name) = self.parent_of(path)?;
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Err(rustix::io::Errno::EXIST) => {
                // Only a directory may already be there.
                self.open_dir(path).map(drop)
            }
            r => r.map_err(io::Error::from),
        }
    }

    /// A new file at `path`, open for writing and reading back (mode 0600
    /// until it is done).
    pub fn create(&mut self, path: &[u8]) -> io::Result<File> {
        let fd = rustix::fs::openat2(
            &self.root,
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
            RESOLVE,
        )?;
        Ok(File::from(fd))
    }

    pub fn symlink(&mut self, target: &[u8], path: &[u8]) -> io::Result<()> {
        let (parent, name) = self.parent_of(path)?;
        rustix::fs::symlinkat(target, parent, name)?;
        Ok(())
    }

    /// Links `path` to the file `target`, both beneath the directory (the
    /// old name's last part is not followed: a link to a symlink links it).
    pub fn hard_link(&mut self, target: &[u8], path: &[u8]) -> io::Result<()> {
        let (dir, name) = split(target);
        let from = self.walk_to(dir)?;
        let (parent, new_name) = self.parent_of(path)?;
        rustix::fs::linkat(&from, name, parent, new_name, AtFlags::empty())?;
        Ok(())
    }

    /// Sets a directory's mode, once everything in it is written.
    pub fn set_mode(&mut self, path: &[u8], mode: u32) -> io::Result<()> {
        let dir = self.open_dir(path)?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Sets the modification (and access) time of `path`, not following it
    /// if it is a symlink.
    pub fn set_time(&mut self, path: &[u8], secs: i64, nanos: u32) -> io::Result<()> {
        let (parent, name) = self.parent_of(path)?;
        rustix::fs::utimensat(parent, name, &times(secs, nanos), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn open_dir(&self, path: &[u8]) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat2(
            &self.root,
            if path.is_empty() { b"." } else { path },
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?)
    }

    /// The directory `path` is in, opened beneath the root, and its name.
    fn parent_of<'p>(&mut self, path: &'p [u8]) -> io::Result<(&OwnedFd, &'p [u8])> {
        let (dir, name) = split(path);
        if dir.is_empty() {
            return Ok((&self.root, name));
        }
        if self.parent.as_ref().is_none_or(|(p, _)| p != dir) {
            let fd = self.walk_to(dir)?;
            self.parent = Some((dir.to_vec(), fd));
        }
        Ok((&self.parent.as_ref().expect("just opened").1, name))
    }

    /// The directory `dir` (empty: the root), opened beneath the root.
    fn walk_to(&self, dir: &[u8]) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat2(
            &self.root,
            if dir.is_empty() { b"." } else { dir },
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?)
    }
}

/// A path's directory and last part.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    }
}

pub(crate) fn times(secs: i64, nanos: u32) -> Timestamps {
    let at = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    };
    Timestamps {
        last_access: at,
        last_modification: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_written_out_of_the_directory_even_through_a_planted_link() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        let canary = outer.path().join("canary");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&canary).unwrap();
        // A link someone planted: writes through it are refused by the kernel.
        std::os::unix::fs::symlink(&canary, root.join("planted")).unwrap();
        let mut b = Beneath::open(&root).unwrap();
        assert!(b.create(b"planted/x").is_err());
        assert!(b.create(b"../canary/x").is_err());
        assert!(b.mkdir(b"planted/d").is_err());
        assert!(b.symlink(b"/etc", b"planted/l").is_err());
        assert!(b.hard_link(b"planted/x", b"h").is_err());
        assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 0);
        b.parents(b"a/b/c").unwrap();
        std::io::Write::write_all(&mut b.create(b"a/b/c").unwrap(), b"hi").unwrap();
        b.hard_link(b"a/b/c", b"a/h").unwrap();
        b.symlink(b"b/c", b"a/l").unwrap();
        b.set_time(b"a/l", 1_000_000, 0).unwrap();
        b.set_mode(b"a", 0o755).unwrap();
        assert_eq!(std::fs::read(root.join("a/h")).unwrap(), b"hi");
        assert_eq!(std::fs::read(root.join("a/l")).unwrap(), b"hi");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::symlink_metadata(root.join("a/l")).unwrap().mtime(),
            1_000_000
        );
        assert!(b.mkdir(b"a/b/c").is_err(), "a file is not a directory");
    }
}
