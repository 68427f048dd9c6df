//! Where an extraction's checked entries go: beneath a directory on disk,
//! or, as a tar stream under one path, straight into whatever reads it (a
//! flatten taking the archive as an image layer, nothing extracted first;
//! only a file that may be a zip is copied aside, for the nested-zip
//! check). The checks come before either sees an entry.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::Path;

use crate::beneath::{times, Beneath};

/// An entry's mode and time, as the archive gives them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    pub mode: u32,
    pub secs: i64,
    pub nanos: u32,
}

/// The writing side of an extraction.
pub(crate) trait Dest {
    /// Makes the directory `path` and any missing parents; its mode and
    /// time come last, from `dir_stamp`.
    fn dir(&mut self, path: &[u8]) -> io::Result<()>;
    /// Makes `path`'s missing parents.
    fn parents(&mut self, path: &[u8]) -> io::Result<()>;
    /// A new file whose header declares `size` bytes.
    fn file(
        &mut self,
        path: &[u8],
        size: u64,
        mode: u32,
        stamp: Stamp,
    ) -> io::Result<Box<dyn DestFile + '_>>;
    fn symlink(&mut self, path: &[u8], target: &[u8], stamp: Stamp) -> io::Result<()>;
    /// `path` linked to `target`, a file written before.
    fn hard_link(&mut self, path: &[u8], target: &[u8]) -> io::Result<()>;
    /// A directory's mode and time, once everything is written, the
    /// deepest first.
    fn dir_stamp(&mut self, path: &[u8], stamp: Stamp) -> io::Result<()>;
    /// The end: `root` is the top directory's mode and time.
    fn finish(&mut self, root: Stamp) -> io::Result<()>;
}

/// One file's data as it is read.
pub(crate) trait DestFile {
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
    /// `len` bytes of zeros (a sparse file's hole).
    fn hole(&mut self, len: u64) -> io::Result<()>;
    /// All its data is there, `held` bytes. With `read_back`, a file to read
    /// them from again (for the nested-zip check).
    fn close(self: Box<Self>, held: u64, read_back: bool) -> io::Result<Option<File>>;
}

impl Dest for Beneath {
    fn dir(&mut self, path: &[u8]) -> io::Result<()> {
        self.parents(path)?;
        self.mkdir(path)
    }

    fn parents(&mut self, path: &[u8]) -> io::Result<()> {
        Beneath::parents(self, path)
    }

    fn file(
        &mut self,
        path: &[u8],
        _size: u64,
        mode: u32,
        stamp: Stamp,
    ) -> io::Result<Box<dyn DestFile + '_>> {
        Ok(Box::new(DiskFile {
            file: self.create(path)?,
            at: 0,
            mode,
            stamp,
        }))
    }

    fn symlink(&mut self, path: &[u8], target: &[u8], stamp: Stamp) -> io::Result<()> {
        Beneath::symlink(self, target, path)?;
        self.set_time(path, stamp.secs, stamp.nanos)
    }

    fn hard_link(&mut self, path: &[u8], target: &[u8]) -> io::Result<()> {
        Beneath::hard_link(self, target, path)
    }

    fn dir_stamp(&mut self, path: &[u8], stamp: Stamp) -> io::Result<()> {
        self.set_mode(path, stamp.mode)?;
        self.set_time(path, stamp.secs, stamp.nanos)
    }

    fn finish(&mut self, _root: Stamp) -> io::Result<()> {
        // The directory is the caller's: its own mode and time stay.
        Ok(())
    }
}

struct DiskFile {
    file: File,
    /// Where the next data goes.
    at: u64,
    mode: u32,
    stamp: Stamp,
}

impl DestFile for DiskFile {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.at += data.len() as u64;
        Ok(())
    }

    fn hole(&mut self, len: u64) -> io::Result<()> {
        self.at += len;
        self.file.seek(io::SeekFrom::Start(self.at)).map(drop)
    }

    fn close(self: Box<Self>, held: u64, read_back: bool) -> io::Result<Option<File>> {
        if held > self.at {
            // A hole at its end: no data made the file that long.
            self.file.set_len(held)?;
        }
        rustix::fs::fchmod(&self.file, rustix::fs::Mode::from_raw_mode(self.mode))?;
        rustix::fs::futimens(&self.file, &times(self.stamp.secs, self.stamp.nanos))?;
        Ok(read_back.then_some(self.file))
    }
}

/// Entries as a tar stream (GNU headers, long names as GNU long-name
/// entries) under `at`, owned by root. Directories come at the end with
/// their final modes and times, the top one (`at` itself) last.
pub(crate) struct TarOut<'s, W: Write> {
    out: W,
    at: Vec<u8>,
    /// Where copies of files that may be zips go, for the nested-zip check.
    scratch: &'s Path,
}

impl<'s, W: Write> TarOut<'s, W> {
    /// `at`: a relative path without a trailing slash ("app", "srv/www").
    pub fn new(out: W, at: &str, scratch: &'s Path) -> TarOut<'s, W> {
        TarOut {
            out,
            at: at.trim_matches('/').as_bytes().to_vec(),
            scratch,
        }
    }

    fn inside(&self, path: &[u8], dir: bool) -> Vec<u8> {
        let mut name = self.at.clone();
        if !path.is_empty() {
            name.push(b'/');
            name.extend_from_slice(path);
        }
        if dir {
            name.push(b'/');
        }
        name
    }

    fn header(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        size: u64,
        stamp: Stamp,
        link: Option<&[u8]>,
    ) -> io::Result<()> {
        if name.len() > NAME {
            self.long(b'L', name)?;
        }
        if let Some(link) = link.filter(|l| l.len() > NAME) {
            self.long(b'K', link)?;
        }
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..name.len().min(NAME)].copy_from_slice(&name[..name.len().min(NAME)]);
        if let Some(link) = link {
            old.linkname[..link.len().min(NAME)].copy_from_slice(&link[..link.len().min(NAME)]);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(stamp.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(stamp.secs.max(0) as u64);
        h.set_cksum();
        self.out.write_all(h.as_bytes())
    }

    /// A GNU long-name (`L`) or long-link (`K`) entry for what follows.
    fn long(&mut self, kind: u8, value: &[u8]) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..LONG_LINK.len()].copy_from_slice(LONG_LINK);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(value.len() as u64 + 1);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(value)?;
        self.out.write_all(&[0])?;
        pad(&mut self.out, value.len() as u64 + 1)
    }
}

/// The name field's length in a tar header.
const NAME: usize = 100;
const LONG_LINK: &[u8] = b"././@LongLink";

/// Zeros up to the next 512-byte block after `len` bytes of data.
fn pad(out: &mut impl Write, len: u64) -> io::Result<()> {
    let rest = (512 - len % 512) % 512;
    out.write_all(&[0u8; 512][..rest as usize])
}

impl<W: Write> Dest for TarOut<'_, W> {
    fn dir(&mut self, _path: &[u8]) -> io::Result<()> {
        // Written at the end by `dir_stamp`; until then the reader implies it.
        Ok(())
    }

    fn parents(&mut self, _path: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn file(
        &mut self,
        path: &[u8],
        size: u64,
        mode: u32,
        stamp: Stamp,
    ) -> io::Result<Box<dyn DestFile + '_>> {
        let name = self.inside(path, false);
        self.header(
            &name,
            tar::EntryType::Regular,
            size,
            Stamp { mode, ..stamp },
            None,
        )?;
        Ok(Box::new(TarFile {
            out: &mut self.out,
            written: 0,
            head: Vec::new(),
            copy: None,
            scratch: self.scratch,
        }))
    }

    fn symlink(&mut self, path: &[u8], target: &[u8], stamp: Stamp) -> io::Result<()> {
        let name = self.inside(path, false);
        let stamp = Stamp {
            mode: 0o777,
            ..stamp
        };
        self.header(&name, tar::EntryType::Symlink, 0, stamp, Some(target))
    }

    fn hard_link(&mut self, path: &[u8], target: &[u8]) -> io::Result<()> {
        let (name, target) = (self.inside(path, false), self.inside(target, false));
        let stamp = Stamp {
            mode: 0o644,
            secs: 0,
            nanos: 0,
        };
        self.header(&name, tar::EntryType::Link, 0, stamp, Some(&target))
    }

    fn dir_stamp(&mut self, path: &[u8], stamp: Stamp) -> io::Result<()> {
        let name = self.inside(path, true);
        self.header(&name, tar::EntryType::Directory, 0, stamp, None)
    }

    fn finish(&mut self, root: Stamp) -> io::Result<()> {
        self.dir_stamp(b"", root)?;
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()
    }
}

/// A file's data in the stream; its first bytes looked at, and while they
/// may still be a zip's, a copy kept for the nested-zip check.
struct TarFile<'a, W: Write> {
    out: &'a mut W,
    written: u64,
    head: Vec<u8>,
    copy: Option<File>,
    scratch: &'a Path,
}

/// How a zip's local header starts.
const ZIP: &[u8] = b"PK\x03\x04";

impl<W: Write> TarFile<'_, W> {
    fn copied(&mut self, data: &[u8]) -> io::Result<()> {
        if self.head.len() < ZIP.len() {
            let want = (ZIP.len() - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..want]);
            if !ZIP.starts_with(&self.head) {
                self.copy = None;
            } else if self.copy.is_none() {
                // Unnamed where it can be (O_TMPFILE): gone with its
                // descriptor.
                self.copy = Some(tempfile::tempfile_in(self.scratch)?);
            }
        }
        match &mut self.copy {
            Some(f) => f.write_all(data),
            None => Ok(()),
        }
    }
}

impl<W: Write> DestFile for TarFile<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.copied(data)?;
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn hole(&mut self, len: u64) -> io::Result<()> {
        let zeros = [0u8; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.write(&zeros[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    fn close(self: Box<Self>, _held: u64, read_back: bool) -> io::Result<Option<File>> {
        // Holes were written as zeros: what it holds is what was written.
        pad(self.out, self.written)?;
        Ok(if read_back { self.copy } else { None })
    }
}
