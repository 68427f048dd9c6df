//! Directory blocks: a single linear block when the entries fit, otherwise a
//! hashed (htree) index over leaf blocks sorted by name hash. Every leaf ends
//! in a checksum entry, every index block in a `dx_tail`.

use crate::checksum::crc32c_raw;
use crate::dirhash::name_hash;
use crate::layout::BLOCK_SIZE;
use crate::Error;

/// Directory entry file types.
pub const FT_REG: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHR: u8 = 3;
pub const FT_BLK: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

/// The leaf checksum entry at the end of every leaf block.
const TAIL: usize = 12;
const LEAF_ROOM: usize = BLOCK_SIZE - TAIL;
/// `dx_root`: '.' (12) + '..' (12) + root info (8), then the count/limit.
const ROOT_COUNT_OFFSET: usize = 32;
/// `dx_node`: a fake empty entry (8), then the count/limit.
const NODE_COUNT_OFFSET: usize = 8;
const DX_TAIL: usize = 8;
const ROOT_LIMIT: usize = (BLOCK_SIZE - ROOT_COUNT_OFFSET - DX_TAIL) / 8;
const NODE_LIMIT: usize = (BLOCK_SIZE - NODE_COUNT_OFFSET - DX_TAIL) / 8;
const DX_HASH_HALF_MD4: u8 = 1;

pub struct Child<'a> {
    pub name: &'a [u8],
    pub ino: u32,
    pub file_type: u8,
}

fn rec_len(name_len: usize) -> usize {
    (8 + name_len).next_multiple_of(4)
}

fn put_entry(block: &mut [u8], at: usize, ino: u32, rec: usize, name: &[u8], ft: u8) {
    block[at..at + 4].copy_from_slice(&ino.to_le_bytes());
    block[at + 4..at + 6].copy_from_slice(&(rec as u16).to_le_bytes());
    block[at + 6] = name.len() as u8;
    block[at + 7] = ft;
    block[at + 8..at + 8 + name.len()].copy_from_slice(name);
}

/// Writes `entries` into one leaf block, the last stretched to the tail.
fn leaf_block(entries: &[(&[u8], u32, u8)], seed: u32) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK_SIZE];
    let mut at = 0;
    for (i, &(name, ino, ft)) in entries.iter().enumerate() {
        let rec = if i + 1 == entries.len() {
            LEAF_ROOM - at
        } else {
            rec_len(name.len())
        };
        put_entry(&mut block, at, ino, rec, name, ft);
        at += rec;
    }
    if entries.is_empty() {
        // An empty leaf is one unused entry spanning the block.
        put_entry(&mut block, 0, 0, LEAF_ROOM, b"", 0);
    }
    // The tail: inode 0, rec_len 12, name_len 0, type 0xDE, checksum.
    block[LEAF_ROOM + 4..LEAF_ROOM + 6].copy_from_slice(&(TAIL as u16).to_le_bytes());
    block[LEAF_ROOM + 7] = 0xDE;
    let csum = crc32c_raw(seed, &block[..LEAF_ROOM]);
    block[LEAF_ROOM + 8..].copy_from_slice(&csum.to_le_bytes());
    block
}

/// Index entries (hash, logical block) into an index block at `count_offset`,
/// with its limit and `dx_tail` checksum.
fn fill_index(
    block: &mut [u8],
    count_offset: usize,
    limit: usize,
    entries: &[(u32, u32)],
    seed: u32,
) {
    let c = count_offset;
    block[c..c + 2].copy_from_slice(&(limit as u16).to_le_bytes());
    block[c + 2..c + 4].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for (i, &(hash, blk)) in entries.iter().enumerate() {
        let at = c + 8 * i;
        if i > 0 {
            block[at..at + 4].copy_from_slice(&hash.to_le_bytes());
        }
        block[at + 4..at + 8].copy_from_slice(&blk.to_le_bytes());
    }
    let tail = c + 8 * limit;
    let csum = crc32c_raw(
        crc32c_raw(seed, &block[..c + 8 * entries.len()]),
        &[0u8; DX_TAIL],
    );
    block[tail + 4..tail + 8].copy_from_slice(&csum.to_le_bytes());
}

/// Encodes a directory's blocks in logical order.
pub fn encode(
    ino: u32,
    parent: u32,
    children: &[Child<'_>],
    hash_seed: &[u32; 4],
    inode_seed: u32,
) -> Result<Vec<Vec<u8>>, Error> {
    let linear_size: usize = 12
        + 12
        + children
            .iter()
            .map(|c| rec_len(c.name.len()))
            .sum::<usize>();
    if linear_size <= LEAF_ROOM {
        let mut entries: Vec<(&[u8], u32, u8)> = vec![(b".", ino, FT_DIR), (b"..", parent, FT_DIR)];
        entries.extend(children.iter().map(|c| (c.name, c.ino, c.file_type)));
        return Ok(vec![leaf_block(&entries, inode_seed)]);
    }

    // Leaves, filled in hash order; a leaf that starts in the middle of a run
    // of equal hashes is marked by the low bit of its index hash.
    let mut sorted: Vec<(u32, &Child<'_>)> = children
        .iter()
        .map(|c| (name_hash(c.name, hash_seed), c))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(b.1.name)));
    let mut leaves: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut current: Vec<(&[u8], u32, u8)> = Vec::new();
    let (mut used, mut first_hash, mut prev_hash) = (0usize, 0u32, None::<u32>);
    for &(hash, c) in &sorted {
        let need = rec_len(c.name.len());
        if used + need > LEAF_ROOM && !current.is_empty() {
            leaves.push((first_hash, leaf_block(&current, inode_seed)));
            current.clear();
            used = 0;
        }
        if current.is_empty() {
            first_hash = if prev_hash == Some(hash) {
                hash | 1
            } else {
                hash
            };
        }
        current.push((c.name, c.ino, c.file_type));
        used += need;
        prev_hash = Some(hash);
    }
    leaves.push((first_hash, leaf_block(&current, inode_seed)));

    let mut root = vec![0u8; BLOCK_SIZE];
    put_entry(&mut root, 0, ino, 12, b".", FT_DIR);
    put_entry(&mut root, 12, parent, BLOCK_SIZE - 12, b"..", FT_DIR);
    root[24 + 4] = DX_HASH_HALF_MD4;
    root[24 + 5] = 8; // info_length

    let n = leaves.len();
    let mut blocks = vec![root];
    if n <= ROOT_LIMIT {
        let index: Vec<(u32, u32)> = leaves
            .iter()
            .enumerate()
            .map(|(i, (h, _))| (*h, 1 + i as u32))
            .collect();
        fill_index(
            &mut blocks[0],
            ROOT_COUNT_OFFSET,
            ROOT_LIMIT,
            &index,
            inode_seed,
        );
        blocks.extend(leaves.into_iter().map(|(_, b)| b));
        return Ok(blocks);
    }
    let nodes = n.div_ceil(NODE_LIMIT);
    if nodes > ROOT_LIMIT {
        return Err(Error::path(
            b"",
            format!(
                "is a directory of {} entries, more than a two-level htree holds",
                children.len()
            ),
        ));
    }
    // Logical layout: root, leaves 1..=n, then the index nodes.
    blocks[0][24 + 6] = 1; // indirect_levels
    let mut root_index = Vec::with_capacity(nodes);
    let mut node_blocks = Vec::with_capacity(nodes);
    for (k, chunk) in leaves.chunks(NODE_LIMIT).enumerate() {
        let base = 1 + k * NODE_LIMIT;
        let index: Vec<(u32, u32)> = chunk
            .iter()
            .enumerate()
            .map(|(i, (h, _))| (*h, (base + i) as u32))
            .collect();
        let mut node = vec![0u8; BLOCK_SIZE];
        node[4..6].copy_from_slice(&(BLOCK_SIZE as u16).to_le_bytes());
        fill_index(&mut node, NODE_COUNT_OFFSET, NODE_LIMIT, &index, inode_seed);
        root_index.push((chunk[0].0, (1 + n + k) as u32));
        node_blocks.push(node);
    }
    fill_index(
        &mut blocks[0],
        ROOT_COUNT_OFFSET,
        ROOT_LIMIT,
        &root_index,
        inode_seed,
    );
    blocks.extend(leaves.into_iter().map(|(_, b)| b));
    blocks.extend(node_blocks);
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, len: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("{i:0len$}").into_bytes()).collect()
    }

    fn encode_names(names: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let children: Vec<Child<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Child {
                name: n,
                ino: 11 + i as u32,
                file_type: FT_REG,
            })
            .collect();
        encode(2, 2, &children, &[1, 2, 3, 4], 0).unwrap()
    }

    #[test]
    fn small_directories_are_one_linear_block() {
        assert_eq!(encode_names(&names(10, 8)).len(), 1);
    }

    #[test]
    fn large_directories_get_an_index() {
        let blocks = encode_names(&names(1000, 20));
        assert!(blocks.len() > 2);
        assert_eq!(blocks[0][24 + 5], 8);
        assert_eq!(blocks[0][24 + 6], 0, "one level");
        let count = u16::from_le_bytes([blocks[0][34], blocks[0][35]]) as usize;
        assert_eq!(count, blocks.len() - 1);
    }

    #[test]
    fn very_large_directories_get_two_levels() {
        let blocks = encode_names(&names(10_000, 250));
        assert_eq!(blocks[0][24 + 6], 1, "two levels");
    }
}
