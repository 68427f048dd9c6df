//! The superblock and the group descriptors.

use crate::checksum::crc32c_raw;
use crate::layout::{BLOCKS_PER_GROUP, DESC_SIZE};

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_EXT_ATTR: u32 = 0x8;
const COMPAT_DIR_INDEX: u32 = 0x20;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// Directory hashes treat name bytes as unsigned, whatever the host.
const FLAGS_UNSIGNED_HASH: u32 = 0x2;
const DEFM_XATTR_USER: u32 = 0x4;
const DEFM_ACL: u32 = 0x8;
/// `s_jnl_backup_type`: the superblock keeps a copy of the journal's i_block.
const JNL_BACKUP_BLOCKS: u8 = 1;
const LOG_GROUPS_PER_FLEX: u8 = 4;

pub const JOURNAL_INO: u32 = 8;
pub const FIRST_INO: u32 = 11;

pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u32,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub inodes_per_group: u32,
    pub time: u32,
    pub uuid: [u8; 16],
    pub label: [u8; 16],
    pub hash_seed: [u32; 4],
    /// The journal inode's i_block and size, when there is a journal.
    pub journal: Option<([u8; 60], u64)>,
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

impl Superblock {
    /// The 1024-byte superblock as stored in group `group`.
    pub fn encode(&self, group: u32) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        put32(&mut b, 0x00, self.inodes_count);
        put32(&mut b, 0x04, self.blocks_count);
        put32(&mut b, 0x0C, self.free_blocks);
        put32(&mut b, 0x10, self.free_inodes);
        put32(&mut b, 0x14, 0); // first data block
        put32(&mut b, 0x18, 2); // log2(4096) - 10
        put32(&mut b, 0x1C, 2);
        put32(&mut b, 0x20, BLOCKS_PER_GROUP as u32);
        put32(&mut b, 0x24, BLOCKS_PER_GROUP as u32);
        put32(&mut b, 0x28, self.inodes_per_group);
        put32(&mut b, 0x30, self.time); // last write
        put16(&mut b, 0x36, 0xFFFF); // max mount count: no forced checks
        put16(&mut b, 0x38, 0xEF53);
        put16(&mut b, 0x3A, 1); // cleanly unmounted
        put16(&mut b, 0x3C, 1); // on errors: continue
        put32(&mut b, 0x40, self.time); // last check
        put32(&mut b, 0x4C, 1); // dynamic revision
        put32(&mut b, 0x54, FIRST_INO);
        put16(&mut b, 0x58, crate::layout::INODE_SIZE as u16);
        put16(&mut b, 0x5A, group as u16);
        let journal = if self.journal.is_some() {
            COMPAT_HAS_JOURNAL
        } else {
            0
        };
        put32(&mut b, 0x5C, journal | COMPAT_EXT_ATTR | COMPAT_DIR_INDEX);
        put32(
            &mut b,
            0x60,
            INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG,
        );
        put32(
            &mut b,
            0x64,
            RO_COMPAT_SPARSE_SUPER
                | RO_COMPAT_LARGE_FILE
                | RO_COMPAT_HUGE_FILE
                | RO_COMPAT_DIR_NLINK
                | RO_COMPAT_EXTRA_ISIZE
                | RO_COMPAT_METADATA_CSUM,
        );
        b[0x68..0x78].copy_from_slice(&self.uuid);
        b[0x78..0x88].copy_from_slice(&self.label);
        for (i, w) in self.hash_seed.iter().enumerate() {
            put32(&mut b, 0xEC + 4 * i, *w);
        }
        b[0xFC] = 1; // default hash: half_md4
        put32(&mut b, 0x100, DEFM_XATTR_USER | DEFM_ACL);
        put32(&mut b, 0x108, self.time); // mkfs time
        if let Some((i_block, size)) = &self.journal {
            put32(&mut b, 0xE0, JOURNAL_INO);
            b[0xFD] = JNL_BACKUP_BLOCKS;
            b[0x10C..0x10C + 60].copy_from_slice(i_block);
            put32(&mut b, 0x10C + 60, (size >> 32) as u32);
            put32(&mut b, 0x10C + 64, *size as u32);
        }
        put16(&mut b, 0x15C, crate::inode::EXTRA_ISIZE); // min extra isize
        put16(&mut b, 0x15E, crate::inode::EXTRA_ISIZE); // wanted extra isize
        put32(&mut b, 0x160, FLAGS_UNSIGNED_HASH);
        b[0x174] = LOG_GROUPS_PER_FLEX;
        b[0x175] = 1; // checksum type: crc32c
        let csum = crc32c_raw(!0, &b[..0x3FC]);
        put32(&mut b, 0x3FC, csum);
        b
    }
}

/// One group's descriptor fields.
#[derive(Clone, Debug, Default)]
pub struct GroupDesc {
    pub block_bitmap: u32,
    pub inode_bitmap: u32,
    pub inode_table: u32,
    pub free_blocks: u16,
    pub free_inodes: u16,
    pub used_dirs: u16,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
    pub itable_unused: u16,
}

/// `bg_flags`: the inode table is known to be zeroed.
const BG_INODE_ZEROED: u16 = 0x4;

impl GroupDesc {
    pub fn encode(&self, group: u32, fs_seed: u32) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        put32(&mut b, 0x00, self.block_bitmap);
        put32(&mut b, 0x04, self.inode_bitmap);
        put32(&mut b, 0x08, self.inode_table);
        put16(&mut b, 0x0C, self.free_blocks);
        put16(&mut b, 0x0E, self.free_inodes);
        put16(&mut b, 0x10, self.used_dirs);
        put16(&mut b, 0x12, BG_INODE_ZEROED);
        put16(&mut b, 0x18, self.block_bitmap_csum as u16);
        put16(&mut b, 0x1A, self.inode_bitmap_csum as u16);
        put16(&mut b, 0x1C, self.itable_unused);
        let csum = crc32c_raw(crc32c_raw(fs_seed, &group.to_le_bytes()), &b);
        put16(&mut b, 0x1E, csum as u16);
        b
    }
}
