//! Block geometry and the block allocator.
//!
//! The image is laid out as hcsshim's tar2ext4 does: file data streams into
//! blocks from a single forward-moving cursor (lanes writing side by side
//! take it in chunks, see `lanes`); directories, extent trees,
//! xattr blocks, the journal, bitmaps and inode tables are placed after the
//! data when the tree is complete. With `flex_bg` the bitmaps and inode tables
//! of every group may live anywhere, so they all go at the end.
//!
//! The only fixed places are the superblock and group-descriptor copies at
//! the start of group 0 and of the `sparse_super` backup groups (1 and the
//! powers of 3, 5 and 7). The cursor skips a reserved region at the start of
//! each of those; the region is sized for the largest descriptor table the
//! image may need, and what the final table does not use stays free.

use crate::Error;

pub const BLOCK_SIZE: usize = 4096;
pub const BLOCKS_PER_GROUP: u64 = 32768;
pub const INODE_SIZE: usize = 256;
pub const INODES_PER_BLOCK: u32 = (BLOCK_SIZE / INODE_SIZE) as u32;
/// 32-byte group descriptors (no `64bit` feature): 128 per block.
pub const DESC_SIZE: usize = 32;
pub const DESCS_PER_BLOCK: u64 = (BLOCK_SIZE / DESC_SIZE) as u64;
/// Without `64bit`, block numbers are 32 bits wide.
pub const MAX_BLOCKS: u64 = 1 << 32;
/// The longest initialised extent.
pub const MAX_EXTENT_LEN: u32 = 32768;
/// Descriptor blocks reserved when the final size is not known in advance:
/// room for 1024 groups, i.e. images up to 128 GiB.
pub const DEFAULT_GDT_RESERVE: u64 = 8;

/// Does group `g` hold a superblock copy under `sparse_super`?
pub fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

/// Number of descriptor-table blocks for `groups` groups.
pub fn gdt_blocks(groups: u64) -> u64 {
    groups.div_ceil(DESCS_PER_BLOCK)
}

/// A run of physical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub start: u32,
    pub len: u32,
}

/// Hands out blocks in increasing order, never inside a reserved
/// superblock/descriptor region, never past `limit`.
#[derive(Clone, Debug)]
pub struct Allocator {
    next: u64,
    /// Blocks reserved at the start of each backup group: superblock plus
    /// the reserved descriptor table.
    reserve: u64,
    limit: u64,
}

impl Allocator {
    pub fn new(gdt_reserve: u64, limit: u64) -> Self {
        let reserve = 1 + gdt_reserve;
        Allocator {
            next: reserve,
            reserve,
            limit,
        }
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// The first block not yet handed out.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Moves the cursor past a reserved region if it stands at one.
    fn skip_reserved(&mut self) {
        let in_group = self.next % BLOCKS_PER_GROUP;
        if in_group < self.reserve && has_super(self.next / BLOCKS_PER_GROUP) {
            self.next += self.reserve - in_group;
        }
    }

    fn check(&self, end: u64) -> Result<(), Error> {
        if end > self.limit {
            return Err(Error::NoSpace {
                needed_blocks: end,
                available_blocks: self.limit,
            });
        }
        Ok(())
    }

    /// One block.
    pub fn one(&mut self) -> Result<u32, Error> {
        self.skip_reserved();
        self.check(self.next + 1)?;
        let b = self.next;
        self.next += 1;
        Ok(b as u32)
    }

    /// `n` contiguous blocks (`n` must fit in a group after its reserve).
    pub fn contiguous(&mut self, n: u64) -> Result<u32, Error> {
        debug_assert!(n > 0 && n <= BLOCKS_PER_GROUP - self.reserve);
        self.skip_reserved();
        let group_end = (self.next / BLOCKS_PER_GROUP + 1) * BLOCKS_PER_GROUP;
        if self.next + n > group_end && has_super(group_end / BLOCKS_PER_GROUP) {
            self.next = group_end;
            self.skip_reserved();
        }
        self.check(self.next + n)?;
        let b = self.next;
        self.next += n;
        Ok(b as u32)
    }

    /// `n` blocks in as few runs as the reserved regions allow, each run at
    /// most one extent long.
    pub fn runs(&mut self, mut n: u64) -> Result<Vec<Run>, Error> {
        let mut out: Vec<Run> = Vec::new();
        while n > 0 {
            self.skip_reserved();
            let group_end = (self.next / BLOCKS_PER_GROUP + 1) * BLOCKS_PER_GROUP;
            let take = n.min(group_end - self.next).min(u64::from(MAX_EXTENT_LEN));
            self.check(self.next + take)?;
            let start = self.next as u32;
            self.next += take;
            n -= take;
            match out.last_mut() {
                Some(r)
                    if u64::from(r.start) + u64::from(r.len) == u64::from(start)
                        && u64::from(r.len) + take <= u64::from(MAX_EXTENT_LEN) =>
                {
                    r.len += take as u32
                }
                _ => out.push(Run {
                    start,
                    len: take as u32,
                }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_groups_are_zero_one_and_powers_of_three_five_seven() {
        let got: Vec<u64> = (0..130).filter(|&g| has_super(g)).collect();
        assert_eq!(got, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125]);
    }

    #[test]
    fn cursor_skips_reserved_regions() {
        let mut a = Allocator::new(8, u64::MAX);
        assert_eq!(a.one().unwrap(), 9);
        // Fill group 0 up to its end, then group 1 starts with a reserve.
        a.next = BLOCKS_PER_GROUP - 1;
        assert_eq!(a.one().unwrap() as u64, BLOCKS_PER_GROUP - 1);
        assert_eq!(a.one().unwrap() as u64, BLOCKS_PER_GROUP + 9);
        // Group 2 has no backup: no skip.
        a.next = 2 * BLOCKS_PER_GROUP;
        assert_eq!(a.one().unwrap() as u64, 2 * BLOCKS_PER_GROUP);
    }

    #[test]
    fn contiguous_runs_never_straddle_a_reserve() {
        let mut a = Allocator::new(8, u64::MAX);
        a.next = BLOCKS_PER_GROUP - 10;
        assert_eq!(a.contiguous(20).unwrap() as u64, BLOCKS_PER_GROUP + 9);
        let runs = {
            a.next = 2 * BLOCKS_PER_GROUP + 5;
            a.runs(2 * BLOCKS_PER_GROUP).unwrap()
        };
        // Group 2 (no backup) flows into group 3 (backup) only via a gap.
        assert!(runs.iter().all(|r| r.len <= MAX_EXTENT_LEN));
        assert_eq!(
            runs.iter().map(|r| u64::from(r.len)).sum::<u64>(),
            2 * BLOCKS_PER_GROUP
        );
        assert_eq!(u64::from(runs[1].start), 3 * BLOCKS_PER_GROUP + 9);
    }

    #[test]
    fn limit_is_enforced() {
        let mut a = Allocator::new(1, 12);
        assert!(a.runs(10).is_ok());
        assert!(matches!(a.one(), Err(Error::NoSpace { .. })));
    }
}
