//! An empty jbd2 journal, as mkfs.ext4 makes it: a version 2 superblock in
//! the first block, nothing to replay. The rest of the journal is never read
//! before it is written, so it stays a hole in the image.

/// The journal length mke2fs picks for a filesystem of `fs_blocks` blocks
/// (`ext2fs_default_journal_size`), never below jbd2's minimum of 1024.
pub fn default_blocks(fs_blocks: u64) -> u64 {
    match fs_blocks {
        0..32768 => 1024,
        32768..262144 => 4096,
        262144..524288 => 8192,
        524288..4194304 => 16384,
        4194304..8388608 => 32768,
        8388608..16777216 => 65536,
        16777216..33554432 => 131072,
        _ => 262144,
    }
}

/// The journal superblock (big-endian, as jbd2 stores it).
pub fn superblock(blocks: u32, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    let mut put = |off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_be_bytes());
    put(0x00, 0xC03B_3998); // magic
    put(0x04, 4); // superblock v2
    put(0x0C, crate::layout::BLOCK_SIZE as u32);
    put(0x10, blocks); // s_maxlen
    put(0x14, 1); // s_first
    put(0x18, 1); // s_sequence
    put(0x40, 1); // s_nr_users
    b[0x30..0x40].copy_from_slice(uuid);
    b
}
