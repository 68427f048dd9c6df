//! Reading an image file back: holes (free space, unused inode tables, the
//! journal's unwritten blocks) read as the zeros they are without asking the
//! kernel for them, and the reading runs on a thread of its own so that
//! whoever consumes the bytes (the sha256, a compressor) only computes. The
//! image's file data was written around the page cache (see
//! `builderd_ext4::direct`), so it is read back the same way, in large reads.

use std::fs::OpenOptions;
use std::io::{self, BufRead, Read};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use builderd_ext4::direct::DirectFile;
use builderd_import::ReadAhead;
use sha2::{Digest as _, Sha256};

/// The file's bytes in order, holes as zeros.
pub struct SparseReader {
    file: DirectFile,
    len: u64,
    pos: u64,
    /// Where the data (or hole) the position is in ends.
    run_end: u64,
    in_hole: bool,
}

impl SparseReader {
    pub fn open(path: &Path) -> io::Result<SparseReader> {
        let file = DirectFile::new(Arc::new(
            OpenOptions::new().read(true).write(true).open(path)?,
        ));
        let len = file.buffered_file().metadata()?.len();
        Ok(SparseReader {
            file,
            len,
            pos: 0,
            run_end: 0,
            in_hole: false,
        })
    }

    fn seek(&self, whence: libc::c_int) -> u64 {
        // SAFETY: lseek on an open descriptor; no memory is involved.
        let at = unsafe {
            libc::lseek(
                self.file.buffered_file().as_raw_fd(),
                self.pos as libc::off_t,
                whence,
            )
        };
        // ENXIO: no data at or after pos; other errors: read it all as data.
        if at < 0 {
            if whence == libc::SEEK_DATA {
                self.len
            } else {
                self.len.max(self.pos)
            }
        } else {
            (at as u64).min(self.len)
        }
    }

    /// Finds the run (data or hole) the position is in.
    fn next_run(&mut self) {
        let data = self.seek(libc::SEEK_DATA);
        if data > self.pos {
            self.in_hole = true;
            self.run_end = data;
        } else {
            self.in_hole = false;
            self.run_end = self.seek(libc::SEEK_HOLE).max(self.pos + 1).min(self.len);
        }
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.run_end {
            self.next_run();
        }
        let want = buf.len().min((self.run_end - self.pos) as usize);
        let n = if self.in_hole {
            buf[..want].fill(0);
            want
        } else {
            let n = self.file.read_at(&mut buf[..want], self.pos)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the image shrank while it was read back",
                ));
            }
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// Bytes per read when reading the image back: reads around the page
/// cache reach the disk's speed only when large (measured on this project's
/// machines: 1 MiB reads ran at half the speed of 8 MiB ones).
const READ_BACK_CHUNK: usize = 8 << 20;

/// The image read back on its own thread.
pub fn read_back(path: &Path) -> io::Result<ReadAhead> {
    Ok(ReadAhead::with_chunks(
        SparseReader::open(path)?,
        3,
        READ_BACK_CHUNK,
        "image-read-back",
    ))
}

/// The sha256 of an image file, as hex.
pub fn sha256(path: &Path) -> Result<String> {
    let mut hash = Sha256::new();
    let mut image = read_back(path)?;
    // Straight from the read-back buffers: the hash is the one serial step
    // after the image is complete, so it gets no copy in front of it.
    loop {
        let data = image
            .fill_buf()
            .map_err(|e| anyhow::anyhow!("reading the image back for its checksum: {e}"))?;
        if data.is_empty() {
            break;
        }
        hash.update(data);
        let n = data.len();
        image.consume(n);
    }
    Ok(builderd_oci::Digest::of_hasher(hash).hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn holes_read_as_zeros_and_the_hash_is_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&[7u8; 70000]).unwrap();
        f.set_len(9 << 20).unwrap();
        drop(f);
        let whole = std::fs::read(&path).unwrap();
        let mut read = Vec::new();
        SparseReader::open(&path)
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert!(read == whole);
        assert_eq!(
            sha256(&path).unwrap(),
            builderd_oci::Digest::of(&whole).hex()
        );
    }
}
