//! Extent trees: up to four extents in the inode, otherwise leaf blocks of
//! 340 extents under as many levels of index blocks as needed.

use crate::checksum::crc32c_raw;
use crate::layout::{Allocator, BLOCK_SIZE};
use crate::tree::Extent;
use crate::Error;

const MAGIC: u16 = 0xF30A;
const IN_INODE: usize = 4;
const PER_BLOCK: usize = (BLOCK_SIZE - 12 - 4) / 12;

/// An encoded extent tree: the inode's `i_block` and the tree blocks to
/// write, with the physical block each goes to.
pub struct ExtentTree {
    pub i_block: [u8; 60],
    pub blocks: Vec<(u32, Vec<u8>)>,
}

/// One entry of a node: a leaf extent, or an index pointing at a child.
#[derive(Clone, Copy)]
enum Item {
    Leaf(Extent),
    Index { logical: u32, child: u32 },
}

impl Item {
    fn logical(&self) -> u32 {
        match *self {
            Item::Leaf(e) => e.logical,
            Item::Index { logical, .. } => logical,
        }
    }

    fn encode(&self, out: &mut [u8]) {
        match *self {
            Item::Leaf(e) => {
                out[0..4].copy_from_slice(&e.logical.to_le_bytes());
                out[4..6].copy_from_slice(&(e.len as u16).to_le_bytes());
                out[6..8].copy_from_slice(&0u16.to_le_bytes());
                out[8..12].copy_from_slice(&e.start.to_le_bytes());
            }
            Item::Index { logical, child } => {
                out[0..4].copy_from_slice(&logical.to_le_bytes());
                out[4..8].copy_from_slice(&child.to_le_bytes());
                out[8..12].fill(0);
            }
        }
    }
}

fn header(out: &mut [u8], entries: usize, max: usize, depth: u16) {
    out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    out[2..4].copy_from_slice(&(entries as u16).to_le_bytes());
    out[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    out[6..8].copy_from_slice(&depth.to_le_bytes());
    out[8..12].fill(0);
}

/// Builds the tree for `extents` (sorted by logical block), allocating its
/// blocks from `alloc`. `inode_seed` keys the tree blocks' checksums.
pub fn build(
    extents: &[Extent],
    alloc: &mut Allocator,
    inode_seed: u32,
) -> Result<ExtentTree, Error> {
    let mut items: Vec<Item> = extents.iter().map(|&e| Item::Leaf(e)).collect();
    let mut blocks = Vec::new();
    let mut depth = 0u16;
    while items.len() > IN_INODE {
        let mut parents = Vec::with_capacity(items.len().div_ceil(PER_BLOCK));
        for chunk in items.chunks(PER_BLOCK) {
            let phys = alloc.one()?;
            let mut block = vec![0u8; BLOCK_SIZE];
            header(&mut block, chunk.len(), PER_BLOCK, depth);
            for (i, item) in chunk.iter().enumerate() {
                item.encode(&mut block[12 + 12 * i..24 + 12 * i]);
            }
            let tail = 12 + 12 * PER_BLOCK;
            let csum = crc32c_raw(inode_seed, &block[..tail]);
            block[tail..tail + 4].copy_from_slice(&csum.to_le_bytes());
            parents.push(Item::Index {
                logical: chunk[0].logical(),
                child: phys,
            });
            blocks.push((phys, block));
        }
        items = parents;
        depth += 1;
    }
    let mut i_block = [0u8; 60];
    header(&mut i_block, items.len(), IN_INODE, depth);
    for (i, item) in items.iter().enumerate() {
        item.encode(&mut i_block[12 + 12 * i..24 + 12 * i]);
    }
    Ok(ExtentTree { i_block, blocks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_keep_extents_in_the_inode() {
        let mut alloc = Allocator::new(1, u64::MAX);
        let ext: Vec<Extent> = (0..4)
            .map(|i| Extent {
                logical: i * 10,
                start: 100 + i * 10,
                len: 1,
            })
            .collect();
        let t = build(&ext, &mut alloc, 0).unwrap();
        assert!(t.blocks.is_empty());
        assert_eq!(u16::from_le_bytes([t.i_block[2], t.i_block[3]]), 4);
        assert_eq!(u16::from_le_bytes([t.i_block[6], t.i_block[7]]), 0);
    }

    #[test]
    fn many_extents_need_index_levels() {
        let mut alloc = Allocator::new(1, u64::MAX);
        let n = PER_BLOCK * 4 + 1; // five leaves: one level of index blocks
        let ext: Vec<Extent> = (0..n as u32)
            .map(|i| Extent {
                logical: 2 * i,
                start: 1000 + 2 * i,
                len: 1,
            })
            .collect();
        let t = build(&ext, &mut alloc, 7).unwrap();
        assert_eq!(t.blocks.len(), 5 + 1);
        assert_eq!(
            u16::from_le_bytes([t.i_block[6], t.i_block[7]]),
            2,
            "root depth"
        );
        assert_eq!(u16::from_le_bytes([t.i_block[2], t.i_block[3]]), 1);
    }
}
