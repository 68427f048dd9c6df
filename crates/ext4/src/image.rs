//! The image file: block writes gathered into large sequential writes, done
//! by a writer thread so that reading the source overlaps writing the image.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::direct::{aligned_buf, AlignedBuf, DirectFile};
use crate::layout::BLOCK_SIZE;

const STAGE_BYTES: usize = 4 << 20;
/// Buffers in flight to the writer (the writer's own output); bounds memory
/// to a few stages.
const IN_FLIGHT: usize = 3;

/// Writes blocks at their place in the image. Runs of adjacent blocks are
/// collected and written together; everything never written stays a hole.
pub struct BlockOut {
    file: Arc<DirectFile>,
    stage: AlignedBuf,
    stage_block: u64,
    to_writer: Option<SyncSender<(u64, AlignedBuf)>>,
    recycled: Receiver<AlignedBuf>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl BlockOut {
    /// The writer's output: around the page cache, like the lanes' (see
    /// [`crate::direct`]), so that the metadata the finish writes is neither
    /// copied into fresh page-cache pages nor flushed in the way of the
    /// image's read-back.
    pub fn new(file: File) -> Self {
        BlockOut::on(Arc::new(DirectFile::new(Arc::new(file))), IN_FLIGHT)
    }

    /// Writes to `file` with up to `in_flight` stages queued for its thread.
    pub fn on(file: Arc<DirectFile>, in_flight: usize) -> Self {
        let (to_writer, jobs) = mpsc::sync_channel::<(u64, AlignedBuf)>(in_flight);
        let (give_back, recycled) = mpsc::channel();
        let target = file.clone();
        let writer = std::thread::Builder::new()
            .name("ext4-image-writer".into())
            .spawn(move || {
                for (offset, mut buf) in jobs {
                    target.write_all_at(&buf, offset)?;
                    buf.clear();
                    let _ = give_back.send(buf);
                }
                Ok(())
            })
            .expect("spawning the image writer thread");
        BlockOut {
            file,
            stage: aligned_buf(STAGE_BYTES),
            stage_block: 0,
            to_writer: Some(to_writer),
            recycled,
            writer: Some(writer),
        }
    }

    /// Writes `data` (padded with zeros to whole blocks) from block `block`.
    pub fn write(&mut self, block: u64, data: &[u8]) -> io::Result<()> {
        let next = self.stage_block + (self.stage.len() / BLOCK_SIZE) as u64;
        if self.stage.is_empty() || block != next || self.stage.len() + data.len() > STAGE_BYTES {
            self.flush()?;
            self.stage_block = block;
        }
        self.stage.extend_from_slice(data);
        let pad = self.stage.len().next_multiple_of(BLOCK_SIZE) - self.stage.len();
        if pad > 0 {
            self.stage.extend_from_slice(&[0u8; BLOCK_SIZE][..pad]);
        }
        Ok(())
    }

    /// Writes bytes at a byte offset (superblocks, which are not whole blocks).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.flush()?;
        self.send(offset, AlignedBuf::from_slice(crate::direct::ALIGN, data))
    }

    /// The image file, for those who write or read it beside this.
    pub fn file(&self) -> Arc<DirectFile> {
        self.file.clone()
    }

    fn send(&mut self, offset: u64, buf: AlignedBuf) -> io::Result<()> {
        let sent = self.to_writer.as_ref().map(|tx| tx.send((offset, buf)));
        match sent {
            Some(Ok(())) => Ok(()),
            // The writer stopped: its error says why.
            _ => Err(self
                .stop()
                .err()
                .unwrap_or_else(|| io::Error::other("the image writer stopped"))),
        }
    }

    /// Hands the stage to the writer and takes a fresh buffer.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.stage.is_empty() {
            return Ok(());
        }
        let fresh = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| aligned_buf(STAGE_BYTES));
        let full = std::mem::replace(&mut self.stage, fresh);
        self.send(self.stage_block * BLOCK_SIZE as u64, full)
    }

    /// Waits for the writer to finish everything sent.
    fn stop(&mut self) -> io::Result<()> {
        self.to_writer = None;
        match self.writer.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| io::Error::other("the image writer panicked"))?,
            None => Ok(()),
        }
    }

    /// Flushes and waits for every write; nothing more can be written.
    pub fn close(&mut self) -> io::Result<()> {
        self.flush()?;
        self.stop()
    }

    /// Flushes, waits for every write, sets the image's length; returns the
    /// file.
    pub fn finish(mut self, len: u64) -> io::Result<File> {
        self.flush()?;
        self.stop()?;
        let file = self.file.buffered_file().clone();
        file.set_len(len)?;
        drop(self);
        Arc::try_unwrap(file).map_err(|_| io::Error::other("the image file is still shared"))
    }
}

impl Drop for BlockOut {
    fn drop(&mut self) {
        // On an error path: let the writer drain and end.
        let _ = self.stop();
    }
}

/// Makes `runs` read as zeros again (content written there and then not
/// used), as holes where the filesystem can punch them. Runs that touch
/// are punched as one: a step that deletes a directory of thousands of
/// files leaves that many runs, mostly side by side, and each punch is a
/// transaction of the host's filesystem.
pub fn zero_runs(file: &File, runs: &[crate::layout::Run]) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let mut spans: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| (u64::from(r.start), u64::from(r.start) + u64::from(r.len)))
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut zeros = Vec::new();
    for (start, end) in merged {
        let (mut at, end) = (start * BLOCK_SIZE as u64, end * BLOCK_SIZE as u64);
        // SAFETY: fallocate on an open descriptor; no memory is involved.
        let punched = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at as libc::off_t,
                (end - at) as libc::off_t,
            )
        } == 0;
        if !punched && zeros.is_empty() {
            zeros = vec![0u8; 1 << 20];
        }
        while !punched && at < end {
            let n = ((end - at) as usize).min(zeros.len());
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
    }
    Ok(())
}

/// Is the block all zeros? (Such blocks become holes.)
pub fn is_zero(block: &[u8]) -> bool {
    block
        .chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}
