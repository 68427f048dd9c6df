//! The 256-byte on-disk inode.

use crate::checksum::crc32c_raw;
use crate::entry::Timestamp;
use crate::layout::INODE_SIZE;

pub const S_IFIFO: u16 = 0o010000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFBLK: u16 = 0o060000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFSOCK: u16 = 0o140000;

pub const EXT4_INDEX_FL: u32 = 0x1000;
pub const EXT4_EXTENTS_FL: u32 = 0x80000;

/// Space used by the fields past the 128-byte base inode (`i_extra_isize`):
/// checksum high half, nanosecond times, creation time, version, project.
pub const EXTRA_ISIZE: u16 = 32;
/// Where in-inode extended attributes begin.
pub const INLINE_XATTR_OFFSET: usize = 128 + EXTRA_ISIZE as usize;

/// Earliest and latest times ext4 can hold: a signed 32-bit second count
/// extended by two epoch bits (1901-12-13 to 2446-05-10).
const MIN_SECS: i64 = i32::MIN as i64;
const MAX_SECS: i64 = i32::MAX as i64 + (3 << 32);

/// Splits a time into the base 32-bit seconds and the `*_extra` word (epoch
/// bits and nanoseconds), as the kernel's `ext4_encode_extra_time`. Times out
/// of range are clamped, as the kernel does.
pub fn encode_time(t: Timestamp) -> (u32, u32) {
    let secs = t.secs.clamp(MIN_SECS, MAX_SECS);
    let nanos = if secs == t.secs {
        t.nanos.min(999_999_999)
    } else {
        0
    };
    let lo = secs as i32;
    let epoch = ((secs - i64::from(lo)) >> 32) as u32 & 3;
    (lo as u32, (nanos << 2) | epoch)
}

/// Everything an inode holds, before encoding.
#[derive(Clone, Debug)]
pub struct InodeRecord {
    /// File type and permission bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub ctime: Timestamp,
    pub mtime: Timestamp,
    pub crtime: Timestamp,
    pub links: u16,
    /// Blocks in 512-byte units: data, extent-tree and xattr blocks.
    pub sectors: u64,
    pub flags: u32,
    pub i_block: [u8; 60],
    pub xattr_block: u32,
    /// The in-inode xattr area (magic, entries, values), at most
    /// `INODE_SIZE - INLINE_XATTR_OFFSET` bytes.
    pub inline_xattrs: Vec<u8>,
}

impl Default for InodeRecord {
    fn default() -> Self {
        InodeRecord {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            atime: Timestamp::default(),
            ctime: Timestamp::default(),
            mtime: Timestamp::default(),
            crtime: Timestamp::default(),
            links: 0,
            sectors: 0,
            flags: 0,
            i_block: [0; 60],
            xattr_block: 0,
            inline_xattrs: Vec::new(),
        }
    }
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

impl InodeRecord {
    /// Encodes the inode numbered `ino`, with its checksum.
    pub fn encode(&self, ino: u32, fs_seed: u32) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        put16(&mut b, 0x00, self.mode);
        put16(&mut b, 0x02, self.uid as u16);
        put32(&mut b, 0x04, self.size as u32);
        let (atime, atime_x) = encode_time(self.atime);
        let (ctime, ctime_x) = encode_time(self.ctime);
        let (mtime, mtime_x) = encode_time(self.mtime);
        let (crtime, crtime_x) = encode_time(self.crtime);
        put32(&mut b, 0x08, atime);
        put32(&mut b, 0x0C, ctime);
        put32(&mut b, 0x10, mtime);
        put16(&mut b, 0x18, self.gid as u16);
        put16(&mut b, 0x1A, self.links);
        put32(&mut b, 0x1C, self.sectors as u32);
        put32(&mut b, 0x20, self.flags);
        b[0x28..0x64].copy_from_slice(&self.i_block);
        put32(&mut b, 0x68, self.xattr_block);
        put32(&mut b, 0x6C, (self.size >> 32) as u32);
        put16(&mut b, 0x74, (self.sectors >> 32) as u16);
        put16(&mut b, 0x78, (self.uid >> 16) as u16);
        put16(&mut b, 0x7A, (self.gid >> 16) as u16);
        put16(&mut b, 0x80, EXTRA_ISIZE);
        put32(&mut b, 0x84, ctime_x);
        put32(&mut b, 0x88, mtime_x);
        put32(&mut b, 0x8C, atime_x);
        put32(&mut b, 0x90, crtime);
        put32(&mut b, 0x94, crtime_x);
        b[INLINE_XATTR_OFFSET..INLINE_XATTR_OFFSET + self.inline_xattrs.len()]
            .copy_from_slice(&self.inline_xattrs);
        // Both checksum halves are zero while the checksum is computed.
        let csum = crc32c_raw(crate::checksum::inode_seed(fs_seed, ino, 0), &b);
        put16(&mut b, 0x7C, csum as u16);
        put16(&mut b, 0x82, (csum >> 16) as u16);
        b
    }
}

/// The `i_block` of a device node: the old 16-bit encoding when major and
/// minor both fit in a byte, the new 32-bit one otherwise.
pub fn device_i_block(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        put32(&mut b, 0, (major << 8) | minor);
    } else {
        put32(
            &mut b,
            4,
            (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
        );
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(lo: u32, extra: u32) -> i64 {
        i64::from(lo as i32) + (i64::from(extra & 3) << 32)
    }

    #[test]
    fn times_round_trip_across_the_whole_range() {
        for secs in [
            -(1i64 << 31),
            -1,
            0,
            1,
            1 << 31,
            (1 << 32) + 5,
            4_102_444_800,
            7_258_118_400,
            MAX_SECS,
        ] {
            let (lo, extra) = encode_time(Timestamp::new(secs, 123_456_789));
            assert_eq!(decode(lo, extra), secs, "{secs}");
            assert_eq!(extra >> 2, 123_456_789);
        }
        let (lo, extra) = encode_time(Timestamp::new(MAX_SECS + 10, 5));
        assert_eq!(decode(lo, extra), MAX_SECS, "clamped");
    }

    #[test]
    fn device_numbers_use_old_and_new_encodings() {
        assert_eq!(&device_i_block(8, 1)[..4], &0x0801u32.to_le_bytes());
        let b = device_i_block(259, 70000);
        assert_eq!(&b[..4], &[0; 4]);
        let v = u32::from_le_bytes(b[4..8].try_into().unwrap());
        let (major, minor) = ((v & 0xfff00) >> 8, (v & 0xff) | ((v >> 12) & 0xfff00));
        assert_eq!((major, minor), (259, 70000));
    }
}
