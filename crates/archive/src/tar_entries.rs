//! A tar's entries, plain or compressed (gzip, xz, zstd), by builderd's own
//! tar reader (the one image layers go through: PAX and GNU long names
//! with bounded extension headers). The decompressed stream is counted as
//! it is read, headers and padding included, so neither a bomb of file data
//! nor one of padding runs past the limits; it is read to its end, so the
//! compressor's own checks (gzip's CRC and length, xz's and zstd's
//! checksums) run.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use builderd_import::decompress::{decoder, Compression};
use builderd_import::{EntryKind, TarReader};

use crate::entries::{Counted, Extraction, Stamp};
use crate::limits::{Budget, Limits};
use crate::{Error, Format};

const BUFFER: usize = 1 << 20;

pub(crate) fn read(file: File, format: Format, x: &mut Extraction<'_>) -> Result<(), Error> {
    let mut reader = open(file, format, &x.budget.limits, x.read.clone())?;
    while let Some(entry) = reader.next_entry().map_err(from_reader)? {
        let Some(path) = x.name(&entry.path)? else {
            continue;
        };
        let stamp = Stamp {
            mode: u32::from(entry.meta.mode) & 0o7777,
            secs: entry.meta.mtime.secs,
            nanos: entry.meta.mtime.nanos,
        };
        match &entry.kind {
            EntryKind::File => x.file(path, stamp, entry.size(), |sink| {
                reader.copy_data(&entry, sink).map_err(from_reader)
            })?,
            EntryKind::Dir => x.dir(path, stamp)?,
            EntryKind::Symlink(target) => x.symlink(path, target, stamp)?,
            EntryKind::Hardlink(target) => x.hard_link(path, target)?,
            EntryKind::Device(..) => x.left_out(&path, "device"),
            EntryKind::Fifo => x.left_out(&path, "fifo"),
        }
    }
    reader.drain().map_err(from_reader)
}

/// An archive's tar reader.
pub(crate) type ArchiveTar = TarReader<BufReader<Guard<Box<dyn Read + Send>>>>;

/// The tar reader over the archive's decompressed stream, counted against
/// `limits` (`read`: the archive's bytes read so far).
pub(crate) fn open(
    file: File,
    format: Format,
    limits: &Limits,
    read: Arc<AtomicU64>,
) -> Result<ArchiveTar, Error> {
    let counted = Counted {
        inner: file,
        read: read.clone(),
    };
    let input = BufReader::with_capacity(BUFFER, counted);
    let kind = match format {
        Format::TarGz => Compression::Gzip,
        Format::TarXz => Compression::Xz,
        Format::TarZst => Compression::Zstd,
        _ => Compression::None,
    };
    let stream = decoder(input, kind)
        .map_err(|e| Error::Archive(format!("the archive's {} stream: {e}", format.name())))?;
    let guarded = Guard {
        inner: stream,
        out: 0,
        cap: cap(limits),
        read,
        budget: Budget::new(*limits),
    };
    Ok(TarReader::new(
        BufReader::with_capacity(BUFFER, guarded),
        "the archive",
    ))
}

/// The most decompressed bytes a stream within the limits can need: its
/// data, a header and padding per entry, and room for extension headers.
fn cap(limits: &Limits) -> u64 {
    limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(2048))
        .saturating_add(16 << 20)
}

/// The reader's error as the archive's: a limit the guard raised comes back
/// as itself.
fn from_reader(e: builderd_import::Error) -> Error {
    match e {
        builderd_import::Error::Io { path, source } => match source.into_inner() {
            Some(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::Archive(format!("{path}: {other}")),
            },
            None => Error::Archive(format!("{path}: cannot be read")),
        },
        builderd_import::Error::Invalid { path, reason } => Error::Entry {
            entry: crate::error::shown(path.as_bytes()),
            rule: reason,
        },
        builderd_import::Error::Ext4(e) => Error::Archive(e.to_string()),
    }
}

/// The decompressed stream, counted against the limits as it is read.
pub(crate) struct Guard<R> {
    inner: R,
    out: u64,
    cap: u64,
    read: Arc<AtomicU64>,
    /// For its ratio check.
    budget: Budget,
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        if self.out > self.cap {
            return Err(io::Error::other(Error::limit(
                "max_bytes",
                format!(
                    "{} bytes uncompressed; the tar stream runs past what its entries can need",
                    self.budget.limits.max_bytes
                ),
                None,
            )));
        }
        self.budget
            .ratio(None, self.out, self.read.load(Ordering::Relaxed))
            .map_err(io::Error::other)?;
        Ok(n)
    }
}
