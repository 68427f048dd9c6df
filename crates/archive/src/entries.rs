//! The checked writing of each entry the readers give: its name made
//! plain, where it leads and the limits checked before anything of it is
//! written, then written beneath the destination. Devices and fifos are
//! left out and setuid, setgid and sticky bits cleared, each told.
//! Directory modes and times are set last, once their contents are in.

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) use crate::dest::Stamp;
use crate::dest::{Dest, DestFile};
use crate::limits::{Budget, Limits};
use crate::names::{normalize, Origin};
use crate::seen::{Kind, Seen};
use crate::{Error, Format};

/// Bytes read from the archive at a time.
const CHUNK: usize = 256 << 10;
/// Notices told one by one; past this many, only counted.
const MAX_NOTICES: u64 = 20;

/// What an extraction wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    pub format: Format,
    /// sha256 of the archive's bytes.
    pub sha256: String,
    pub archive_bytes: u64,
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Devices, fifos and sockets left out.
    pub dropped: u64,
    /// Entries whose setuid, setgid or sticky bit was cleared.
    pub bits_cleared: u64,
    /// The newest modification time of any entry (0 for none).
    pub newest_mtime: i64,
}

pub(crate) struct Extraction<'a> {
    to: Box<dyn Dest + 'a>,
    seen: Seen,
    pub budget: Budget,
    origin: Origin,
    /// Bytes of the archive read so far (for the ratio).
    pub read: Arc<AtomicU64>,
    /// Directories described, for their modes and times at the end.
    dirs: Vec<(Vec<u8>, Stamp)>,
    /// Directories no entry described, made for what is in them.
    implied: Vec<Vec<u8>>,
    notice: &'a (dyn Fn(String) + Sync),
    notices: u64,
    done: Extracted,
    /// The buffer file data is copied through, made once (zeroing one
    /// per file cost more than the copying, over many small files).
    buf: Vec<u8>,
}

impl<'a> Extraction<'a> {
    pub fn new(
        to: Box<dyn Dest + 'a>,
        limits: Limits,
        notice: &'a (dyn Fn(String) + Sync),
        format: Format,
        sha256: String,
        archive_bytes: u64,
    ) -> Result<Extraction<'a>, Error> {
        Ok(Extraction {
            to,
            seen: Seen::default(),
            budget: Budget::new(limits),
            origin: if format == Format::Zip {
                Origin::Zip
            } else {
                Origin::Tar
            },
            read: Arc::new(AtomicU64::new(0)),
            dirs: Vec::new(),
            implied: Vec::new(),
            notice,
            notices: 0,
            buf: Vec::new(),
            done: Extracted {
                format,
                sha256,
                archive_bytes,
                entries: 0,
                files: 0,
                dirs: 0,
                symlinks: 0,
                hard_links: 0,
                bytes: 0,
                dropped: 0,
                bits_cleared: 0,
                newest_mtime: 0,
            },
        })
    }

    /// The entry's name checked and made plain (None: the root itself),
    /// and counted.
    pub fn name(&mut self, raw: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.budget.entry(raw)?;
        normalize(raw, self.origin, self.budget.limits.max_depth)
    }

    pub fn dir(&mut self, path: Vec<u8>, stamp: Stamp) -> Result<(), Error> {
        self.seen.check(&path, Kind::Dir)?;
        self.count_parents(&path)?;
        self.to.dir(&path).map_err(|e| write_err(&path, e))?;
        let implied = self.seen.add(&path, Kind::Dir);
        self.implied.extend(implied);
        self.dated(stamp.secs);
        let stamp = Stamp {
            mode: self.kept_bits(&path, stamp.mode, 0o777),
            ..stamp
        };
        self.dirs.push((path, stamp));
        self.done.dirs += 1;
        Ok(())
    }

    /// A file whose header declares `declared` bytes; `fill` writes its
    /// data into the sink it is given.
    pub fn file(
        &mut self,
        path: Vec<u8>,
        stamp: Stamp,
        declared: u64,
        fill: impl FnOnce(&mut FileSink<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.seen.check(&path, Kind::File)?;
        self.count_parents(&path)?;
        self.budget.declared(&path, declared)?;
        self.to.parents(&path).map_err(|e| write_err(&path, e))?;
        let mode = self.kept_bits(&path, stamp.mode, 0o777);
        let file = self
            .to
            .file(&path, declared, mode, stamp)
            .map_err(|e| write_err(&path, e))?;
        let (filled, file, held, refused, first) = {
            let mut sink = FileSink {
                file,
                path: &path,
                budget: &mut self.budget,
                read: &self.read,
                declared,
                first: Vec::new(),
                held: 0,
                refused: None,
                buf: &mut self.buf,
            };
            let filled = fill(&mut sink);
            (filled, sink.file, sink.held, sink.refused, sink.first)
        };
        match (filled, refused) {
            (_, Some(e)) | (Err(e), None) => return Err(e),
            (Ok(()), None) => {}
        }
        if held != declared {
            return Err(Error::entry(
                &path,
                format!("holds {held} bytes, not the {declared} its header declares"),
            ));
        }
        let kept = file
            .close(held, first.starts_with(b"PK\x03\x04"))
            .map_err(|e| write_err(&path, e))?;
        if let Some(copy) = kept {
            self.nested(&path, &copy, held)?;
        }
        let implied = self.seen.add(&path, Kind::File);
        self.implied.extend(implied);
        self.dated(stamp.secs);
        self.done.files += 1;
        Ok(())
    }

    pub fn symlink(&mut self, path: Vec<u8>, target: &[u8], stamp: Stamp) -> Result<(), Error> {
        self.count_parents(&path)?;
        let implied = self.seen.symlink(&path, target)?;
        self.implied.extend(implied);
        self.to.parents(&path).map_err(|e| write_err(&path, e))?;
        self.to
            .symlink(&path, target, stamp)
            .map_err(|e| write_err(&path, e))?;
        self.dated(stamp.secs);
        self.done.symlinks += 1;
        Ok(())
    }

    pub fn hard_link(&mut self, path: Vec<u8>, raw_target: &[u8]) -> Result<(), Error> {
        let outside = || {
            Error::entry(
                &path,
                format!(
                    "is a hard link to {}, which is not a file earlier in the archive",
                    crate::error::shown(raw_target)
                ),
            )
        };
        let target = normalize(raw_target, self.origin, self.budget.limits.max_depth)
            .ok()
            .flatten()
            .ok_or_else(outside)?;
        self.seen.hard_link(&path, &target)?;
        self.count_parents(&path)?;
        self.to.parents(&path).map_err(|e| write_err(&path, e))?;
        self.to
            .hard_link(&path, &target)
            .map_err(|e| write_err(&path, e))?;
        let implied = self.seen.add(&path, Kind::File);
        self.implied.extend(implied);
        self.done.hard_links += 1;
        Ok(())
    }

    /// A zip inside the archive: never unpacked here, but one whose own
    /// headers say it unpacks past the limits (a nested bomb, one level
    /// down) is refused, so that a build script's `unzip` does not meet it.
    fn nested(&self, path: &[u8], file: &File, held: u64) -> Result<(), Error> {
        let limits = &self.budget.limits;
        let total = match crate::zip_end::nested_size(file, limits.max_entries) {
            crate::zip_end::Nested::Unreadable => return Ok(()),
            crate::zip_end::Nested::TooMany(n) => {
                return Err(Error::entry(
                    path,
                    format!(
                        "is a zip of {n} entries (its own headers say): an archive inside the \
                         archive past the max_entries limit is refused"
                    ),
                ))
            }
            crate::zip_end::Nested::Unpacks(total) => total,
        };
        let ratio = total / held.max(1);
        if total > limits.max_bytes || (total > crate::RATIO_FLOOR && ratio >= limits.max_ratio) {
            return Err(Error::entry(
                path,
                format!(
                    "is a zip that unpacks to {total} bytes, {ratio} times its size (its own \
                     headers say): an archive inside the archive past the max_ratio or \
                     max_bytes limit is refused"
                ),
            ));
        }
        Ok(())
    }

    /// Counts the directories `path` implies, which no entry made yet,
    /// as entries: a deep name is not a way around `max_entries`.
    fn count_parents(&mut self, path: &[u8]) -> Result<(), Error> {
        for _ in 0..self.seen.missing_parents(path) {
            self.budget.entry(path)?;
        }
        Ok(())
    }

    /// A device, fifo or socket: left out, and told.
    pub fn left_out(&mut self, path: &[u8], what: &str) {
        self.done.dropped += 1;
        self.tell(format!(
            "{}: a {what}, left out (an archive's devices and fifos are not extracted)",
            crate::error::shown(path)
        ));
    }

    /// `mode` with only the `keep` bits; told when that clears setuid,
    /// setgid or sticky.
    fn kept_bits(&mut self, path: &[u8], mode: u32, keep: u32) -> u32 {
        if mode & 0o7000 != 0 {
            self.done.bits_cleared += 1;
            self.tell(format!(
                "{}: mode {:o} has its setuid, setgid or sticky bit cleared",
                crate::error::shown(path),
                mode & 0o7777
            ));
        }
        mode & keep
    }

    fn tell(&mut self, line: String) {
        self.notices += 1;
        if self.notices <= MAX_NOTICES {
            (self.notice)(line);
        }
    }

    fn dated(&mut self, secs: i64) {
        self.done.newest_mtime = self.done.newest_mtime.max(secs);
    }

    /// Directory modes and times, deepest first (setting a time, then
    /// writing into the directory, would move it).
    pub fn finish(mut self) -> Result<Extracted, Error> {
        self.seen.check_links()?;
        if self.notices > MAX_NOTICES {
            (self.notice)(format!(
                "… and {} more entries left out or changed",
                self.notices - MAX_NOTICES
            ));
        }
        // Directories no entry described: 0755, dated as the newest entry
        // (the same archive gives the same tree); described later, the
        // description wins.
        let newest = Stamp {
            mode: 0o755,
            secs: self.done.newest_mtime,
            nanos: 0,
        };
        let described: std::collections::HashSet<Vec<u8>> =
            self.dirs.iter().map(|(p, _)| p.clone()).collect();
        let implied: Vec<_> = std::mem::take(&mut self.implied)
            .into_iter()
            .filter(|p| !described.contains(p))
            .map(|p| (p, newest))
            .collect();
        self.dirs.extend(implied);
        self.dirs
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        for (path, stamp) in &self.dirs {
            self.to
                .dir_stamp(path, *stamp)
                .map_err(|e| write_err(path, e))?;
        }
        self.to.finish(newest).map_err(Error::Write)?;
        self.done.entries = self.budget.entries;
        self.done.bytes = self.budget.bytes;
        Ok(self.done)
    }
}

/// Where a file's data goes: counted against the limits as it is written.
pub(crate) struct FileSink<'a> {
    file: Box<dyn DestFile + 'a>,
    path: &'a [u8],
    budget: &'a mut Budget,
    read: &'a AtomicU64,
    /// What the entry's header says it holds: never more is taken.
    declared: u64,
    /// The file's first bytes (what it is).
    first: Vec<u8>,
    /// Bytes the file holds, holes included.
    held: u64,
    /// What stopped it, kept across a reader that passes only its own
    /// error type.
    refused: Option<Error>,
    /// For `copy_from`.
    buf: &'a mut Vec<u8>,
}

impl FileSink<'_> {
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        // Its first four bytes, however the reader splits its writes (a
        // hole first leaves them zeros: not a zip).
        if self.first.len() < 4 && self.held == self.first.len() as u64 {
            let want = (4 - self.first.len()).min(data.len());
            self.first.extend_from_slice(&data[..want]);
        }
        self.count(data.len() as u64)?;
        self.file.write(data).map_err(|e| write_err(self.path, e))
    }

    pub fn hole(&mut self, len: u64) -> Result<(), Error> {
        self.count(len)?;
        self.file.hole(len).map_err(|e| write_err(self.path, e))
    }

    fn count(&mut self, n: u64) -> Result<(), Error> {
        self.held += n;
        if self.held > self.declared {
            return Err(Error::entry(
                self.path,
                format!(
                    "holds more than the {} bytes its header declares",
                    self.declared
                ),
            ));
        }
        let read = self.read.load(Ordering::Relaxed);
        self.budget.grow(self.path, self.held, n, read)
    }

    /// Copies `r` to the end into the file, `CHUNK` bytes at a time; an
    /// error reading is the archive's, named by `what_failed`.
    pub fn copy_from(
        &mut self,
        r: &mut dyn Read,
        what_failed: &dyn Fn(io::Error) -> Error,
    ) -> Result<(), Error> {
        let mut buf = std::mem::take(self.buf);
        buf.resize(CHUNK, 0);
        let copied = self.copy_with(r, &mut buf, what_failed);
        *self.buf = buf;
        copied
    }

    fn copy_with(
        &mut self,
        r: &mut dyn Read,
        buf: &mut [u8],
        what_failed: &dyn Fn(io::Error) -> Error,
    ) -> Result<(), Error> {
        loop {
            let n = match r.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(what_failed(e)),
            };
            self.write(&buf[..n])?;
        }
    }
}

/// For the tar reader, which passes only the writer's error type: the
/// error itself is kept for `Extraction::file` to return.
impl builderd_ext4::ContentSink for FileSink<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), builderd_ext4::Error> {
        let r = FileSink::write(self, data);
        self.keep(r)
    }

    fn skip(&mut self, len: u64) -> Result<(), builderd_ext4::Error> {
        let r = self.hole(len);
        self.keep(r)
    }
}

impl FileSink<'_> {
    fn keep(&mut self, r: Result<(), Error>) -> Result<(), builderd_ext4::Error> {
        r.map_err(|e| {
            let message = e.to_string();
            self.refused = Some(e);
            builderd_ext4::Error::Invalid(message)
        })
    }
}

/// The archive file, counting the bytes read from it (for the ratio).
pub(crate) struct Counted {
    pub inner: File,
    pub read: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl io::Seek for Counted {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

fn write_err(path: &[u8], e: io::Error) -> Error {
    Error::Write(io::Error::new(
        e.kind(),
        format!("{}: {e}", crate::error::shown(path)),
    ))
}
