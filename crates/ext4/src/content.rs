//! A regular file's content as it streams in: whole blocks placed as they
//! fill, all-zero blocks left as holes, the extents and a content hash
//! kept. Where a block goes is the caller's ([`Place`]): the writer's own
//! cursor, or a lane's share of it when layers are written side by side.

// twox-hash picks AVX2 at run time (xxhash-rust only at build time, so SSE2
// in a portable build); both compute the same XXH3-128.
use twox_hash::xxhash3_128::Hasher as Xxh3;

use crate::layout::{self, BLOCK_SIZE};
use crate::tree::Extent;
use crate::Error;

/// Puts one block into the image; returns its physical block number.
/// `logical` is the block's index in its file (lanes order their requests
/// for space by it).
pub trait Place {
    fn place(&mut self, logical: u64, block: &[u8]) -> Result<u32, Error>;
}

/// Something a file's content can be written into.
pub trait ContentSink {
    /// Appends content.
    fn write(&mut self, data: &[u8]) -> Result<(), Error>;
    /// Appends `len` bytes of zeros as a hole.
    fn skip(&mut self, len: u64) -> Result<(), Error>;
}

/// A file's content kept in memory (a small file someone reads rather than
/// writes: its size bounds it).
pub struct InMemory(pub Vec<u8>);

impl ContentSink for InMemory {
    fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn skip(&mut self, len: u64) -> Result<(), Error> {
        self.0.resize(self.0.len() + len as usize, 0);
        Ok(())
    }
}

/// A file's content once written: where its blocks are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileData {
    pub(crate) size: u64,
    pub(crate) extents: Vec<Extent>,
    pub(crate) content_hash: u128,
}

impl FileData {
    /// Bytes of content (the apparent size).
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Files are limited by 32-bit logical block numbers: 16 TiB.
const MAX_FILE_BLOCKS: u64 = 1 << 32;

pub(crate) struct Content {
    /// The file's path, for errors.
    path: Vec<u8>,
    /// Logical block of the first byte in `partial`.
    next_block: u64,
    partial: Vec<u8>,
    extents: Vec<Extent>,
    hash: Xxh3,
}

impl Content {
    pub fn new(path: &[u8]) -> Content {
        Content {
            path: path.to_vec(),
            next_block: 0,
            partial: Vec::with_capacity(BLOCK_SIZE),
            extents: Vec::new(),
            hash: Xxh3::new(),
        }
    }

    pub fn path(&self) -> &[u8] {
        &self.path
    }

    pub fn write(&mut self, mut data: &[u8], to: &mut impl Place) -> Result<(), Error> {
        if !self.partial.is_empty() {
            let take = (BLOCK_SIZE - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == BLOCK_SIZE {
                let block = std::mem::take(&mut self.partial);
                self.put_block(&block, to)?;
                self.partial = block;
                self.partial.clear();
            }
        }
        let whole = data.len() / BLOCK_SIZE * BLOCK_SIZE;
        for block in data[..whole].chunks_exact(BLOCK_SIZE) {
            self.put_block(block, to)?;
        }
        self.partial.extend_from_slice(&data[whole..]);
        Ok(())
    }

    pub fn skip(&mut self, mut len: u64, to: &mut impl Place) -> Result<(), Error> {
        if !self.partial.is_empty() {
            let fill = ((BLOCK_SIZE - self.partial.len()) as u64).min(len);
            self.write(&vec![0u8; fill as usize], to)?;
            len -= fill;
        }
        if self.partial.is_empty() {
            self.next_block += len / BLOCK_SIZE as u64;
            self.partial.resize((len % BLOCK_SIZE as u64) as usize, 0);
        }
        self.check_size()
    }

    /// Bytes of content so far.
    fn len(&self) -> u64 {
        self.next_block * BLOCK_SIZE as u64 + self.partial.len() as u64
    }

    fn check_size(&self) -> Result<(), Error> {
        if self.next_block > MAX_FILE_BLOCKS
            || (self.next_block == MAX_FILE_BLOCKS && !self.partial.is_empty())
        {
            return Err(Error::path(
                &self.path,
                "is larger than ext4's 16 TiB file size limit",
            ));
        }
        Ok(())
    }

    fn put_block(&mut self, block: &[u8], to: &mut impl Place) -> Result<(), Error> {
        let logical = self.next_block;
        self.next_block += 1;
        self.check_size()?;
        if crate::image::is_zero(block) {
            return Ok(());
        }
        self.hash.write(&logical.to_le_bytes());
        self.hash.write(block);
        let phys = to.place(logical, block)?;
        let logical = logical as u32;
        match self.extents.last_mut() {
            Some(e)
                if e.logical + e.len == logical
                    && e.start + e.len == phys
                    && e.len < layout::MAX_EXTENT_LEN =>
            {
                e.len += 1
            }
            _ => self.extents.push(Extent {
                logical,
                start: phys,
                len: 1,
            }),
        }
        Ok(())
    }

    /// Places the last partial block; the content is complete.
    pub fn finish(mut self, to: &mut impl Place) -> Result<FileData, Error> {
        let size = self.len();
        if !self.partial.is_empty() {
            let mut block = std::mem::take(&mut self.partial);
            block.resize(BLOCK_SIZE, 0);
            self.put_block(&block, to)?;
        }
        self.hash.write(&size.to_le_bytes());
        Ok(FileData {
            size,
            extents: self.extents,
            content_hash: self.hash.finish_128(),
        })
    }
}
