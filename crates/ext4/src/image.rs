//! The image file: block writes gathered into large sequential writes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::layout::BLOCK_SIZE;

const STAGE_BYTES: usize = 4 << 20;

/// Writes blocks at their place in the image. Runs of adjacent blocks are
/// collected and written together; everything never written stays a hole.
pub struct BlockOut {
    file: File,
    stage: Vec<u8>,
    stage_block: u64,
}

impl BlockOut {
    pub fn new(file: File) -> Self {
        BlockOut {
            file,
            stage: Vec::with_capacity(STAGE_BYTES),
            stage_block: 0,
        }
    }

    /// Writes `data` (padded with zeros to whole blocks) from block `block`.
    pub fn write(&mut self, block: u64, data: &[u8]) -> io::Result<()> {
        let next = self.stage_block + (self.stage.len() / BLOCK_SIZE) as u64;
        if self.stage.is_empty() || block != next || self.stage.len() + data.len() > STAGE_BYTES {
            self.flush()?;
            self.stage_block = block;
        }
        if data.len() > STAGE_BYTES {
            return self.file.write_all_at(data, block * BLOCK_SIZE as u64);
        }
        self.stage.extend_from_slice(data);
        let padded = self.stage.len().next_multiple_of(BLOCK_SIZE);
        self.stage.resize(padded, 0);
        Ok(())
    }

    /// Writes bytes at a byte offset, bypassing the stage (superblocks).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.flush()?;
        self.file.write_all_at(data, offset)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if !self.stage.is_empty() {
            self.file
                .write_all_at(&self.stage, self.stage_block * BLOCK_SIZE as u64)?;
            self.stage.clear();
        }
        Ok(())
    }

    /// Flushes and sets the image's length; returns the file.
    pub fn finish(mut self, len: u64) -> io::Result<File> {
        self.flush()?;
        self.file.set_len(len)?;
        Ok(self.file)
    }
}

/// Is the block all zeros? (Such blocks become holes.)
pub fn is_zero(block: &[u8]) -> bool {
    block
        .chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}
