//! A [`crate::Skeleton`] as bytes: its entries sorted by path, each a
//! record, with an index of where each starts, so that a build looks up the
//! few paths it needs by binary search instead of decoding the whole tree
//! (a stored layer's merged tree has every path of the image).
//!
//! Layout, little-endian: `count: u64`, `count` record offsets (`u64`, from
//! the start), then the records. A record: `path_len: u32`, path, kind
//! (`0` directory, `1` file, `2` symlink, `3` other, `4` a directory no
//! layer describes), then for a symlink
//! `target_len: u32` and the target, for a directory its metadata (mode
//! `u16`, uid and gid `u32`, atime, mtime and ctime as `i64` seconds and
//! `u32` nanoseconds, `xattr_count: u16`, each `name_len: u16`, name,
//! `value_len: u32`, value). [`Table::parse`] checks all of it once, so
//! lookups never read out of bounds.

use std::sync::Arc;

use builderd_ext4::{Metadata, Timestamp, Xattr};

/// What one path is, as looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind<'a> {
    Dir,
    File,
    Symlink(&'a [u8]),
    Other,
}

/// Parsed tree bytes (shared: a copy of the tree costs nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    bytes: Arc<Vec<u8>>,
    count: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("not a tree table: {0}")]
pub struct BadTable(pub(crate) &'static str);

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadTable> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(BadTable("a length overflows"))?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or(BadTable("a record runs past the end"))?;
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, BadTable> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, BadTable> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, BadTable> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn i64(&mut self) -> Result<i64, BadTable> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn time(&mut self) -> Result<Timestamp, BadTable> {
        let secs = self.i64()?;
        Ok(Timestamp::new(secs, self.u32()?))
    }
}

/// One record, as it lies in the bytes.
pub struct Record<'a> {
    pub path: &'a [u8],
    pub kind: PathKind<'a>,
    /// A directory without metadata of its own (kind 4).
    pub implied: bool,
    /// Where a directory's metadata starts.
    meta_at: usize,
    /// The whole record's bytes.
    pub raw: &'a [u8],
}

impl Table {
    /// Checks `bytes` and keeps them.
    pub fn parse(bytes: Vec<u8>) -> Result<Table, BadTable> {
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if bytes.is_empty() {
            return Ok(Table::default());
        }
        let count = usize::try_from(r.u64()?).map_err(|_| BadTable("too many records"))?;
        let index = r.take(count.checked_mul(8).ok_or(BadTable("too many records"))?)?;
        let mut last: Option<&[u8]> = None;
        let mut expected = r.at;
        for i in 0..count {
            let at = u64::from_le_bytes(index[i * 8..i * 8 + 8].try_into().unwrap()) as usize;
            if at != expected {
                return Err(BadTable("an offset is not where its record is"));
            }
            let record = read_record(&bytes, at)?;
            if last.is_some_and(|l| l >= record.path) {
                return Err(BadTable("paths are not sorted"));
            }
            last = Some(record.path);
            expected = at + record.raw.len();
        }
        if expected != bytes.len() {
            return Err(BadTable("bytes after the last record"));
        }
        Ok(Table {
            bytes: Arc::new(bytes),
            count,
        })
    }

    fn offset(&self, i: usize) -> usize {
        let at = 8 + i * 8;
        u64::from_le_bytes(self.bytes[at..at + 8].try_into().unwrap()) as usize
    }

    /// The record at index `i` (checked by `parse`).
    fn record(&self, i: usize) -> Record<'_> {
        read_record(&self.bytes, self.offset(i)).expect("checked when parsed")
    }

    pub fn get(&self, path: &[u8]) -> Option<Record<'_>> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let r = self.record(mid);
            match r.path.cmp(path) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(r),
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn records(&self) -> impl Iterator<Item = Record<'_>> {
        (0..self.count).map(|i| self.record(i))
    }

    /// A directory record's metadata.
    pub fn meta(&self, r: &Record<'_>) -> Metadata {
        let mut reader = Reader {
            bytes: r.raw,
            at: r.meta_at,
        };
        read_meta(&mut reader).expect("checked when parsed")
    }
}

fn read_record(bytes: &[u8], at: usize) -> Result<Record<'_>, BadTable> {
    let mut r = Reader { bytes, at };
    let len = r.u32()? as usize;
    let path = r.take(len)?;
    let tag = r.take(1)?[0];
    let mut meta_at = 0;
    let kind = match tag {
        4 => PathKind::Dir,
        0 => {
            meta_at = r.at - at;
            read_meta(&mut r)?;
            PathKind::Dir
        }
        1 => PathKind::File,
        2 => {
            let n = r.u32()? as usize;
            PathKind::Symlink(r.take(n)?)
        }
        3 => PathKind::Other,
        _ => return Err(BadTable("an unknown kind")),
    };
    Ok(Record {
        path,
        kind,
        implied: tag == 4,
        meta_at,
        raw: &bytes[at..r.at],
    })
}

fn read_meta(r: &mut Reader<'_>) -> Result<Metadata, BadTable> {
    let mode = r.u16()?;
    let uid = r.u32()?;
    let gid = r.u32()?;
    let (atime, mtime, ctime) = (r.time()?, r.time()?, r.time()?);
    let n = r.u16()?;
    let mut xattrs = Vec::new();
    for _ in 0..n {
        let name_len = r.u16()? as usize;
        let name = r.take(name_len)?.to_vec();
        let value_len = r.u32()? as usize;
        xattrs.push(Xattr {
            name,
            value: r.take(value_len)?.to_vec(),
        });
    }
    Ok(Metadata {
        mode,
        uid,
        gid,
        atime,
        mtime,
        ctime,
        xattrs,
    })
}

/// Writes records in path order, then the index before them.
#[derive(Default)]
pub struct TableWriter {
    offsets: Vec<u64>,
    records: Vec<u8>,
}

impl TableWriter {
    /// Appends a record's bytes as they are in another table.
    pub fn raw(&mut self, raw: &[u8]) {
        self.offsets.push(self.records.len() as u64);
        self.records.extend_from_slice(raw);
    }

    pub fn add_implied_dir(&mut self, path: &[u8]) {
        self.offsets.push(self.records.len() as u64);
        self.records.extend((path.len() as u32).to_le_bytes());
        self.records.extend(path);
        self.records.push(4);
    }

    pub fn add(&mut self, path: &[u8], kind: PathKind<'_>, meta: Option<&Metadata>) {
        self.offsets.push(self.records.len() as u64);
        let out = &mut self.records;
        out.extend((path.len() as u32).to_le_bytes());
        out.extend(path);
        match kind {
            PathKind::Dir => {
                out.push(0);
                let m = meta.expect("a directory has metadata");
                out.extend(m.mode.to_le_bytes());
                out.extend(m.uid.to_le_bytes());
                out.extend(m.gid.to_le_bytes());
                for t in [m.atime, m.mtime, m.ctime] {
                    out.extend(t.secs.to_le_bytes());
                    out.extend(t.nanos.to_le_bytes());
                }
                out.extend((m.xattrs.len() as u16).to_le_bytes());
                for x in &m.xattrs {
                    out.extend((x.name.len() as u16).to_le_bytes());
                    out.extend(&x.name);
                    out.extend((x.value.len() as u32).to_le_bytes());
                    out.extend(&x.value);
                }
            }
            PathKind::File => out.push(1),
            PathKind::Symlink(target) => {
                out.push(2);
                out.extend((target.len() as u32).to_le_bytes());
                out.extend(target);
            }
            PathKind::Other => out.push(3),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        let head = 8 + 8 * self.offsets.len();
        let mut out = Vec::with_capacity(head + self.records.len());
        out.extend((self.offsets.len() as u64).to_le_bytes());
        for o in &self.offsets {
            out.extend((o + head as u64).to_le_bytes());
        }
        out.extend(self.records);
        out
    }
}
