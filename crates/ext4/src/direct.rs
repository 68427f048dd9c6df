//! An image written around the page cache (O_DIRECT): file data and the
//! metadata the writer's finish adds alike. An image is written
//! once and read once more (for its checksum), so caching it buys little,
//! while putting a gigabyte and more into the page cache costs a copy per
//! byte and fresh memory for every page: on a virtual machine that hands
//! freed memory back to its host, each of those pages is a fault the host
//! has to serve, and that, not the decompression, was most of a build's
//! time. Where the filesystem refuses O_DIRECT (tmpfs, for one), or for a
//! transfer that is not block-aligned, the ordinary buffered file is used
//! instead, with the same result.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aligned_vec::{AVec, ConstAlign};

/// What O_DIRECT asks of buffers, lengths and offsets, at most: one page.
pub const ALIGN: usize = 4096;

/// A byte buffer whose start is aligned for O_DIRECT.
pub type AlignedBuf = AVec<u8, ConstAlign<ALIGN>>;

/// An empty aligned buffer with room for `capacity` bytes.
pub fn aligned_buf(capacity: usize) -> AlignedBuf {
    AlignedBuf::with_capacity(ALIGN, capacity)
}

/// One file, opened twice: through the page cache and around it.
pub struct DirectFile {
    buffered: Arc<File>,
    direct: Option<File>,
    /// Set when the filesystem turned an O_DIRECT transfer down.
    refused: AtomicBool,
}

impl DirectFile {
    /// `file` and, where the filesystem allows, a second descriptor of it
    /// opened with O_DIRECT (read-write, or read-only where writing is not
    /// allowed).
    pub fn new(file: Arc<File>) -> DirectFile {
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let open = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
        };
        let direct = open(true).or_else(|_| open(false)).ok();
        DirectFile {
            buffered: file,
            direct,
            refused: AtomicBool::new(false),
        }
    }

    /// The descriptor around the page cache, if this transfer may use it.
    fn direct_for(&self, buf: &[u8], offset: u64) -> Option<&File> {
        let aligned = (buf.as_ptr() as usize).is_multiple_of(ALIGN)
            && buf.len().is_multiple_of(ALIGN)
            && offset.is_multiple_of(ALIGN as u64);
        match &self.direct {
            Some(f) if aligned && !self.refused.load(Ordering::Relaxed) => Some(f),
            _ => None,
        }
    }

    /// EINVAL from an O_DIRECT transfer: the filesystem (or device) does
    /// not take it, so this file stops trying.
    fn refused(&self, e: &io::Error) -> bool {
        let refused = e.raw_os_error() == Some(libc::EINVAL);
        if refused {
            self.refused.store(true, Ordering::Relaxed);
        }
        refused
    }

    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Some(direct) = self.direct_for(buf, offset) {
            match direct.write_all_at(buf, offset) {
                Ok(()) => return Ok(()),
                Err(e) if self.refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.buffered.write_all_at(buf, offset)
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if let Some(direct) = self.direct_for(buf, offset) {
            match direct.read_at(buf, offset) {
                Ok(n) => return Ok(n),
                Err(e) if self.refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.buffered.read_at(buf, offset)
    }

    /// Does this file go around the page cache (so far)?
    pub fn is_direct(&self) -> bool {
        self.direct.is_some() && !self.refused.load(Ordering::Relaxed)
    }

    pub fn buffered_file(&self) -> &Arc<File> {
        &self.buffered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_tmpfs(path: &std::path::Path) -> bool {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: an all-zero statfs is a valid value of that plain C struct.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: statfs fills the struct it is given; the path is a C string.
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
        st.f_type == libc::TMPFS_MAGIC
    }

    fn check_round_trip(file: DirectFile) {
        let mut block = aligned_buf(2 * ALIGN);
        block.extend_from_slice(&[7u8; 2 * ALIGN]);
        file.write_all_at(&block, 3 * ALIGN as u64).unwrap();
        // Unaligned: through the page cache, and still coherent with the rest.
        file.write_all_at(b"head", 10).unwrap();
        let mut back = aligned_buf(5 * ALIGN);
        back.extend_from_slice(&[1u8; 5 * ALIGN]);
        let mut at = 0;
        while at < back.len() {
            let n = file.read_at(&mut back[at..], at as u64).unwrap();
            assert!(n > 0);
            at += n;
        }
        assert_eq!(&back[10..14], b"head");
        assert!(back[..10]
            .iter()
            .chain(&back[14..3 * ALIGN])
            .all(|&b| b == 0));
        assert!(back[3 * ALIGN..].iter().all(|&b| b == 7));
    }

    #[test]
    fn aligned_and_unaligned_writes_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap(),
        );
        let direct = DirectFile::new(file);
        if !on_tmpfs(dir.path()) {
            assert!(direct.is_direct(), "a disk filesystem takes O_DIRECT");
        }
        check_round_trip(direct);
    }
}
