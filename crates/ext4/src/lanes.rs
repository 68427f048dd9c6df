//! Lanes: several threads writing file data into one image at once, with a
//! layout that depends only on what they write, never on their timing.
//!
//! Each lane takes space in chunks from the writer's cursor. Every request
//! for a chunk carries the lane's position (how far into its own input the
//! lane is, in bytes of content) and requests are granted in the order of
//! (position, lane): a request waits until every other lane has either
//! passed that position, asked for a chunk at a later one, or ended. Lanes
//! that run ahead wait for the others, which is what lets several
//! decompressors share the cores while the image stays byte for byte the
//! same from run to run.

use std::sync::{Arc, Condvar, Mutex};

use crate::content::{Content, ContentSink, FileData, Place};
use crate::direct::DirectFile;
use crate::image::BlockOut;
use crate::layout::{Allocator, Run, BLOCK_SIZE};
use crate::Error;

/// Blocks a lane takes at a time: 4 MiB.
const CHUNK_BLOCKS: u64 = 1024;
/// A lane says how far it is at least this often (bytes of position), so
/// that lanes waiting on it move on.
const PUBLISH_EVERY: u64 = 256 << 10;
/// Stages a lane's writer thread may have queued: one is written (around
/// the page cache, see [`crate::direct`]) while the next fills.
const LANE_IN_FLIGHT: usize = 1;

/// The lanes of one writer; [`crate::Writer::join_lanes`] hands the cursor
/// back.
pub struct Lanes {
    state: Mutex<State>,
    turn: Condvar,
    file: Arc<DirectFile>,
}

struct State {
    alloc: Allocator,
    /// Each lane's position: a lower bound of its next request's.
    bound: Vec<u64>,
    /// Lanes waiting for a chunk.
    waiting: usize,
    /// Each lane's first chunk, until it takes it.
    first: Vec<Option<Vec<Run>>>,
}

impl Lanes {
    /// Each lane starts with a chunk of its own (given in lane order), so a
    /// lane with little to write never waits for the others, even for one
    /// whose input is slow to come.
    pub(crate) fn new(
        mut alloc: Allocator,
        count: usize,
        file: Arc<DirectFile>,
    ) -> Result<Lanes, Error> {
        let first = (0..count)
            .map(|_| alloc.runs(CHUNK_BLOCKS).map(Some))
            .collect::<Result<_, _>>()?;
        Ok(Lanes {
            state: Mutex::new(State {
                alloc,
                bound: vec![0; count],
                waiting: 0,
                first,
            }),
            turn: Condvar::new(),
            file,
        })
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().bound.len()
    }

    /// Lane `index`: one thread's way into the image. Dropping it ends the
    /// lane (others stop waiting for it).
    pub fn lane(&self, index: usize) -> Lane<'_> {
        let mut runs = self.state.lock().unwrap().first[index]
            .take()
            .expect("each lane is taken once");
        runs.reverse();
        Lane {
            lanes: self,
            index,
            pos: 0,
            published: 0,
            runs,
            out: BlockOut::on(self.file.clone(), LANE_IN_FLIGHT),
        }
    }

    pub(crate) fn into_allocator(self) -> Allocator {
        self.state.into_inner().unwrap().alloc
    }

    /// A chunk for `lane` at position `pos`, once no other lane can still
    /// ask for one at an earlier position.
    fn request(&self, lane: usize, pos: u64) -> Result<Vec<Run>, Error> {
        let mut s = self.state.lock().unwrap();
        s.bound[lane] = pos;
        // This lane's bound rose: one waiting on it may go now.
        if s.waiting > 0 {
            self.turn.notify_all();
        }
        s.waiting += 1;
        while s
            .bound
            .iter()
            .enumerate()
            .any(|(m, &b)| m != lane && (b, m) < (pos, lane))
        {
            s = self.turn.wait(s).unwrap();
        }
        s.waiting -= 1;
        s.alloc.runs(CHUNK_BLOCKS)
    }

    fn publish(&self, lane: usize, pos: u64) {
        let mut s = self.state.lock().unwrap();
        s.bound[lane] = s.bound[lane].max(pos);
        if s.waiting > 0 {
            self.turn.notify_all();
        }
    }
}

/// One thread's share of the writing.
pub struct Lane<'a> {
    lanes: &'a Lanes,
    index: usize,
    /// Bytes of content this lane has gone through (see [`Lane::advance`]).
    pos: u64,
    published: u64,
    /// What is left of its chunk, in order.
    runs: Vec<Run>,
    out: BlockOut,
}

impl<'a> Lane<'a> {
    /// Moves the lane's position on by `bytes` of input that held no file
    /// content (a header, say); files move it by their size themselves.
    pub fn advance(&mut self, bytes: u64) {
        // A hostile sparse file's declared size must not wrap it.
        self.pos = self.pos.saturating_add(bytes);
        self.maybe_publish(self.pos);
    }

    fn maybe_publish(&mut self, pos: u64) {
        if pos >= self.published + PUBLISH_EVERY {
            self.published = pos;
            self.lanes.publish(self.index, pos);
        }
    }

    /// Starts a regular file's content; `path` names it in errors.
    pub fn file<'l>(&'l mut self, path: &[u8]) -> LaneFile<'l, 'a> {
        LaneFile {
            content: Content::new(path),
            lane: self,
        }
    }

    /// Ends the lane once everything it wrote is in the file.
    pub fn finish(mut self) -> Result<(), Error> {
        Ok(self.out.close()?)
    }

    fn take_block(&mut self, pos: u64) -> Result<u32, Error> {
        if self.runs.is_empty() {
            let mut runs = self.lanes.request(self.index, pos)?;
            runs.reverse();
            self.runs = runs;
        }
        let run = self.runs.last_mut().expect("a chunk is never empty");
        let block = run.start;
        run.start += 1;
        run.len -= 1;
        if run.len == 0 {
            self.runs.pop();
        }
        Ok(block)
    }
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        // Ended (or failed): nobody waits for this lane any more.
        self.lanes.publish(self.index, u64::MAX);
    }
}

/// A regular file being written by a lane.
pub struct LaneFile<'l, 'a> {
    lane: &'l mut Lane<'a>,
    content: Content,
}

/// Where a lane file's blocks go: the lane's chunk, ordered by the file's
/// position in the lane.
struct LanePlace<'l, 'a> {
    lane: &'l mut Lane<'a>,
}

impl Place for LanePlace<'_, '_> {
    fn place(&mut self, logical: u64, block: &[u8]) -> Result<u32, Error> {
        let pos = self.lane.pos + logical * BLOCK_SIZE as u64;
        let phys = self.lane.take_block(pos)?;
        self.lane.out.write(u64::from(phys), block)?;
        self.lane.maybe_publish(pos);
        Ok(phys)
    }
}

impl ContentSink for LaneFile<'_, '_> {
    fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.content.write(data, &mut LanePlace { lane: self.lane })
    }

    fn skip(&mut self, len: u64) -> Result<(), Error> {
        self.content.skip(len, &mut LanePlace { lane: self.lane })
    }
}

impl LaneFile<'_, '_> {
    /// Ends the file; its data is placed (and written by the lane's next
    /// flush at the latest).
    pub fn finish(self) -> Result<FileData, Error> {
        let data = self.content.finish(&mut LanePlace {
            lane: &mut *self.lane,
        })?;
        self.lane.advance(data.size());
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::DEFAULT_GDT_RESERVE;
    use std::time::Duration;

    /// Three lanes write files of their own; `pause(lane, file)` slows some
    /// of them down. Returns every file's data, by lane.
    fn write(pause: &(dyn Fn(usize, usize) -> u64 + Sync)) -> Vec<Vec<FileData>> {
        let file = Arc::new(DirectFile::new(Arc::new(tempfile::tempfile().unwrap())));
        let lanes = Lanes::new(Allocator::new(DEFAULT_GDT_RESERVE, u64::MAX), 3, file).unwrap();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|l| {
                    let lanes = &lanes;
                    scope.spawn(move || {
                        let mut lane = lanes.lane(l);
                        let mut out = Vec::new();
                        for i in 0..40 {
                            std::thread::sleep(Duration::from_millis(pause(l, i)));
                            lane.advance(512);
                            let mut f = lane.file(b"f");
                            // Sizes differ by lane, so chunks run out at
                            // different positions.
                            let block = vec![(l * 40 + i) as u8 | 1; BLOCK_SIZE];
                            for _ in 0..(50 + 37 * l + i) {
                                f.write(&block).unwrap();
                            }
                            out.push(f.finish().unwrap());
                        }
                        lane.finish().unwrap();
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn the_layout_does_not_depend_on_timing() {
        let even = write(&|_, _| 0);
        let lane_zero_slow = write(&|l, i| if l == 0 && i % 7 == 0 { 3 } else { 0 });
        let lane_two_slow = write(&|l, i| if l == 2 && i % 5 == 0 { 4 } else { 0 });
        assert!(even == lane_zero_slow && even == lane_two_slow);
        // The lanes interleave rather than one going after another.
        let first = |l: usize| even[l][0].extents[0].start;
        let last = |l: usize| even[l].last().unwrap().extents.last().unwrap().start;
        assert!(first(1) < last(0) && first(0) < last(1));
        // No block is given twice.
        let mut blocks: Vec<u32> = even
            .iter()
            .flatten()
            .flat_map(|d| d.extents.iter().flat_map(|e| e.start..e.start + e.len))
            .collect();
        let n = blocks.len();
        blocks.sort_unstable();
        blocks.dedup();
        assert_eq!(blocks.len(), n);
    }
}
