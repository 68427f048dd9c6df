//! A tar archive, streamed: plain, gzip or zstd (sniffed from the first
//! bytes); ustar, GNU and PAX headers with long names, PAX times with
//! nanoseconds, `SCHILY.xattr.*`, GNU sparse files in the old GNU format and
//! in PAX formats 0.0, 0.1 and 1.0. [`TarReader`] gives the entries one by
//! one, data on demand; [`import_tar`] adds a whole archive to the writer.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use builderd_ext4::{ContentSink, DeviceKind, Metadata, Timestamp, Writer, Xattr};
use tar::EntryType;

use crate::decompress::{decoder, Compression};
use crate::tarstream::TarStream;

use crate::{Error, Progress};

const CHUNK: usize = 1 << 20;

/// Adds every entry of the archive at `archive` to `w`: the last entry for a
/// path wins, as with `tar -x`.
pub fn import_tar(archive: &Path, w: &mut Writer, progress: &dyn Progress) -> Result<(), Error> {
    let name = archive.display().to_string();
    let file = File::open(archive).map_err(|e| Error::io(&name, e))?;
    let read_so_far = Arc::new(AtomicU64::new(0));
    let counted = Counting {
        inner: file,
        bytes: read_so_far.clone(),
    };
    let input =
        decompress(BufReader::with_capacity(CHUNK, counted)).map_err(|e| Error::io(&name, e))?;
    let mut reader = TarReader::new(input, &name);
    let mut entries = 0u64;
    while let Some(entry) = reader.next_entry()? {
        entries += 1;
        match &entry.kind {
            EntryKind::File => {
                let mut out = w.file(&entry.path, entry.meta.clone())?;
                reader.copy_data(&entry, &mut out)?;
                out.finish()?;
            }
            EntryKind::Dir => w.mkdir(&entry.path, entry.meta)?,
            EntryKind::Symlink(target) => w.symlink(&entry.path, target, entry.meta.clone())?,
            EntryKind::Hardlink(target) => w.hardlink(&entry.path, target)?,
            EntryKind::Device(kind, major, minor) => {
                w.device(&entry.path, *kind, *major, *minor, entry.meta.clone())?
            }
            EntryKind::Fifo => w.fifo(&entry.path, entry.meta)?,
        }
        progress.update(read_so_far.load(Ordering::Relaxed), entries);
    }
    Ok(())
}

/// Wraps a stream in the decompressor its first bytes call for.
fn decompress<'a>(mut input: impl BufRead + Send + 'a) -> io::Result<Box<dyn BufRead + 'a>> {
    Ok(match Compression::sniff(&mut input)? {
        Compression::None => Box::new(input),
        kind => Box::new(BufReader::with_capacity(CHUNK, decoder(input, kind)?)),
    })
}

/// Counts bytes read from the archive file (before decompression), for
/// progress.
struct Counting<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file: its data comes from [`TarReader::copy_data`].
    File,
    Dir,
    Symlink(Vec<u8>),
    /// A hard link to the (archive) path given.
    Hardlink(Vec<u8>),
    Device(DeviceKind, u32, u32),
    Fifo,
}

/// One entry of an archive, its extension headers applied. Paths are as the
/// archive has them (`./` prefixes and all); normalising is the caller's.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub meta: Metadata,
    /// Bytes of data the archive stores for it.
    stored: u64,
    sparse: Option<Sparse>,
}

impl Entry {
    /// A regular file's apparent size (a sparse file's real size); 0 for
    /// other kinds.
    pub fn size(&self) -> u64 {
        match (&self.kind, &self.sparse) {
            (EntryKind::File, Some(sparse)) => sparse.real_size,
            (EntryKind::File, None) => self.stored,
            _ => 0,
        }
    }
}

/// Reads entries from an (uncompressed) tar stream. File data goes from
/// the stream's own buffers to the writer, without a copy between.
pub struct TarReader<R: BufRead> {
    stream: TarStream<R>,
    name: String,
    last_path: Vec<u8>,
}

impl<R: BufRead> TarReader<R> {
    /// `name` names the archive in errors.
    pub fn new(input: R, name: &str) -> Self {
        TarReader {
            stream: TarStream::new(input),
            name: name.to_string(),
            last_path: Vec::new(),
        }
    }

    /// The next entry; a file's data not copied by then is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        let member = self.stream.next_member().map_err(|e| {
            let at = if self.last_path.is_empty() {
                self.name.clone()
            } else {
                format!(
                    "{}: after {}",
                    self.name,
                    builderd_ext4::display_path(&self.last_path)
                )
            };
            Error::io(at, e)
        })?;
        let Some(member) = member else {
            return Ok(None);
        };
        let pax = Pax::from_records(&member.pax);
        let path = pax
            .sparse_name
            .clone()
            .unwrap_or_else(|| member.path.clone());
        self.last_path.clone_from(&path);
        let meta = metadata(&member.header, &pax).map_err(|e| Error::io(&path, e))?;
        let entry_type = member.header.entry_type();
        let link = || member.link.clone().filter(|l| !l.is_empty());
        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => EntryKind::File,
            EntryType::Directory => EntryKind::Dir,
            EntryType::Symlink => EntryKind::Symlink(
                link().ok_or_else(|| Error::invalid(&path, "is a symlink without a target"))?,
            ),
            EntryType::Link => EntryKind::Hardlink(
                link().ok_or_else(|| Error::invalid(&path, "is a hard link without a target"))?,
            ),
            EntryType::Char | EntryType::Block => {
                let dev = if entry_type == EntryType::Char {
                    DeviceKind::Char
                } else {
                    DeviceKind::Block
                };
                let major = member
                    .header
                    .device_major()
                    .map_err(|e| Error::io(&path, e))?
                    .unwrap_or(0);
                let minor = member
                    .header
                    .device_minor()
                    .map_err(|e| Error::io(&path, e))?
                    .unwrap_or(0);
                EntryKind::Device(dev, major, minor)
            }
            EntryType::Fifo => EntryKind::Fifo,
            other => {
                return Err(Error::invalid(
                    &path,
                    format!(
                        "has an unsupported tar entry type {:?}",
                        other.as_byte() as char
                    ),
                ))
            }
        };
        let sparse = match (&member.gnu_sparse, pax.sparse) {
            (Some((map, real_size)), _) => Some(Sparse {
                real_size: *real_size,
                map: Some(map.clone()),
            }),
            (None, sparse) => sparse,
        };
        Ok(Some(Entry {
            path,
            kind,
            meta,
            stored: member.size,
            sparse,
        }))
    }

    /// Reads whatever follows the end of the archive to the end of the
    /// stream, so that a reader below (a digest check, a decompressor's
    /// trailer) sees all of its input.
    pub fn drain(self) -> Result<(), Error> {
        io::copy(&mut self.stream.into_inner(), &mut io::sink())
            .map_err(|e| Error::io(&self.name, e))?;
        Ok(())
    }

    /// Streams the current file entry's data into `out` (holes stay holes).
    pub fn copy_data(&mut self, entry: &Entry, out: &mut impl ContentSink) -> Result<(), Error> {
        match &entry.sparse {
            Some(sparse) => copy_sparse(&mut self.stream, &entry.path, entry.stored, sparse, out),
            None => copy(&mut self.stream, &entry.path, out, entry.stored),
        }
    }
}

fn truncated(path: &[u8], got: u64, want: u64) -> Error {
    Error::invalid(
        path,
        format!("is truncated: the archive ends after {got} of its {want} bytes"),
    )
}

/// Copies `limit` bytes of the member's data.
fn copy(
    r: &mut impl BufRead,
    path: &[u8],
    out: &mut impl ContentSink,
    limit: u64,
) -> Result<(), Error> {
    let mut done = 0u64;
    while done < limit {
        let data = match r.fill_buf() {
            Ok([]) => return Err(truncated(path, done, limit)),
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(truncated(path, done, limit))
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let n = data.len().min((limit - done) as usize);
        out.write(&data[..n])?;
        r.consume(n);
        done += n as u64;
    }
    Ok(())
}

/// A sparse file: its real size and data segments.
#[derive(Clone, Debug)]
struct Sparse {
    real_size: u64,
    /// (offset, length) of each data segment; for format 1.0, read from the
    /// start of the entry's data instead.
    map: Option<Vec<(u64, u64)>>,
}

fn copy_sparse<R: BufRead>(
    stream: &mut TarStream<R>,
    path: &[u8],
    stored: u64,
    sparse: &Sparse,
    out: &mut impl ContentSink,
) -> Result<(), Error> {
    let map = match &sparse.map {
        Some(map) => map.clone(),
        None => read_sparse_map(stream).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => truncated(path, 0, stored),
            _ => Error::invalid(path, format!("has a bad sparse map: {e}")),
        })?,
    };
    let mut pos = 0u64;
    for (offset, len) in map {
        if offset < pos
            || offset
                .checked_add(len)
                .is_none_or(|end| end > sparse.real_size)
        {
            return Err(Error::invalid(
                path,
                "has a sparse map whose segments overlap or pass the file's size",
            ));
        }
        out.skip(offset - pos)?;
        copy(stream, path, out, len)?;
        pos = offset + len;
    }
    out.skip(sparse.real_size - pos)?;
    Ok(())
}

/// Format 1.0: decimal numbers, one a line (count, then offset and length
/// pairs), padded to a 512-byte boundary.
fn read_sparse_map(r: &mut impl Read) -> io::Result<Vec<(u64, u64)>> {
    let mut text = Vec::new();
    let mut block = [0u8; 512];
    let mut numbers = Vec::new();
    let mut wanted = None;
    loop {
        r.read_exact(&mut block)?;
        text.extend_from_slice(&block);
        numbers.clear();
        let mut lines = text.split(|&b| b == b'\n').peekable();
        while let Some(line) = lines.next() {
            if lines.peek().is_none() {
                break; // an incomplete last line
            }
            let n: u64 = std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a number"))?;
            numbers.push(n);
            if let Some(w) = wanted {
                if numbers.len() == w {
                    break;
                }
            } else if numbers.len() == 1 {
                wanted = Some(1 + 2 * n as usize);
                if n > 1 << 20 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "too many segments",
                    ));
                }
            }
        }
        if wanted == Some(numbers.len()) {
            return Ok(numbers[1..].chunks_exact(2).map(|c| (c[0], c[1])).collect());
        }
    }
}

/// What the PAX headers say about one entry beyond its path.
#[derive(Default)]
struct Pax {
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Timestamp>,
    atime: Option<Timestamp>,
    ctime: Option<Timestamp>,
    xattrs: Vec<Xattr>,
    sparse_name: Option<Vec<u8>>,
    sparse: Option<Sparse>,
}

impl Pax {
    fn from_records(records: &[(Vec<u8>, Vec<u8>)]) -> Pax {
        let mut pax = Pax::default();
        let (mut major, mut real_size, mut map, mut offsets) = (None, None, None, Vec::new());
        for (key, value) in records {
            let (key, value) = (key.as_slice(), value.as_slice());
            let text = || std::str::from_utf8(value).ok();
            match key {
                b"uid" => pax.uid = text().and_then(|s| s.parse().ok()),
                b"gid" => pax.gid = text().and_then(|s| s.parse().ok()),
                b"mtime" => pax.mtime = text().and_then(parse_time),
                b"atime" => pax.atime = text().and_then(parse_time),
                b"ctime" => pax.ctime = text().and_then(parse_time),
                b"GNU.sparse.name" => pax.sparse_name = Some(value.to_vec()),
                b"GNU.sparse.major" => major = text().and_then(|s| s.parse::<u32>().ok()),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                    real_size = text().and_then(|s| s.parse::<u64>().ok())
                }
                b"GNU.sparse.map" => {
                    let nums: Option<Vec<u64>> =
                        text().map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect());
                    map = nums.map(|n| n.chunks_exact(2).map(|c| (c[0], c[1])).collect::<Vec<_>>());
                }
                b"GNU.sparse.offset" => {
                    offsets.push((text().and_then(|s| s.parse().ok()).unwrap_or(0), 0))
                }
                b"GNU.sparse.numbytes" => {
                    if let Some(last) = offsets.last_mut() {
                        last.1 = text().and_then(|s| s.parse().ok()).unwrap_or(0);
                    }
                }
                k if k.starts_with(b"SCHILY.xattr.") => pax.xattrs.push(Xattr {
                    name: k[b"SCHILY.xattr.".len()..].to_vec(),
                    value: value.to_vec(),
                }),
                _ => {}
            }
        }
        if let Some(real_size) = real_size {
            let map = match major {
                Some(1) => None,
                _ => Some(map.unwrap_or(offsets)),
            };
            pax.sparse = Some(Sparse { real_size, map });
        }
        pax
    }
}

/// A PAX time: decimal seconds, maybe negative, maybe with a fraction.
fn parse_time(s: &str) -> Option<Timestamp> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(match (neg, nanos) {
        (false, n) => Timestamp::new(secs, n),
        (true, 0) => Timestamp::new(-secs, 0),
        (true, n) => Timestamp::new(-secs - 1, 1_000_000_000 - n),
    })
}

fn metadata(header: &tar::Header, pax: &Pax) -> io::Result<Metadata> {
    let mtime = match pax.mtime {
        Some(t) => t,
        None => Timestamp::new(header.mtime()? as i64, 0),
    };
    let gnu_time = |f: fn(&tar::GnuHeader) -> io::Result<u64>| {
        header.as_gnu().and_then(|g| f(g).ok()).filter(|&t| t != 0)
    };
    let atime = pax
        .atime
        .or_else(|| gnu_time(tar::GnuHeader::atime).map(|t| Timestamp::new(t as i64, 0)))
        .unwrap_or(mtime);
    let ctime = pax
        .ctime
        .or_else(|| gnu_time(tar::GnuHeader::ctime).map(|t| Timestamp::new(t as i64, 0)))
        .unwrap_or(mtime);
    Ok(Metadata {
        mode: (header.mode()? & 0o7777) as u16,
        uid: u32::try_from(match pax.uid {
            Some(uid) => uid,
            None => header.uid()?,
        })
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "uid is over 32 bits"))?,
        gid: u32::try_from(match pax.gid {
            Some(gid) => gid,
            None => header.gid()?,
        })
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "gid is over 32 bits"))?,
        atime,
        mtime,
        ctime,
        xattrs: pax.xattrs.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        assert_eq!(
            parse_time("1700000000.5"),
            Some(Timestamp::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_time("-1.25"), Some(Timestamp::new(-2, 750_000_000)));
        assert_eq!(parse_time("-100"), Some(Timestamp::new(-100, 0)));
        assert_eq!(
            parse_time("12.123456789123"),
            Some(Timestamp::new(12, 123_456_789))
        );
        assert_eq!(parse_time("x"), None);
    }

    #[test]
    fn sparse_map_1_0_is_read_to_its_padding() {
        let mut data = b"2\n0\n10\n8192\n5\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"payload");
        let mut r = &data[..];
        let map = read_sparse_map(&mut r).unwrap();
        assert_eq!(map, vec![(0, 10), (8192, 5)]);
        assert_eq!(
            r, b"payload",
            "the map's padding is consumed, the data is not"
        );
    }
}
