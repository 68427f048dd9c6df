//! Extended attributes on disk: name prefixes become an index, POSIX ACLs
//! take ext4's compact form, and entries go into the inode's spare space
//! first and into one shared-able xattr block when they do not fit.

use crate::checksum::crc32c_raw;
use crate::entry::Xattr;
use crate::inode::INLINE_XATTR_OFFSET;
use crate::layout::{BLOCK_SIZE, INODE_SIZE};
use crate::Error;

const MAGIC: u32 = 0xEA02_0000;
const ENTRY_HEADER: usize = 16;
const BLOCK_HEADER: usize = 32;

/// Name prefixes and their ext4 index; exact names first.
const PREFIXES: &[(&[u8], u8, bool)] = &[
    (b"system.posix_acl_access", 2, true),
    (b"system.posix_acl_default", 3, true),
    (b"user.", 1, false),
    (b"trusted.", 4, false),
    (b"security.", 6, false),
    (b"system.", 7, false),
];

/// An attribute in its on-disk form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DiskXattr {
    pub index: u8,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

impl DiskXattr {
    fn entry_size(&self) -> usize {
        ENTRY_HEADER + self.name.len().next_multiple_of(4)
    }
    fn value_size(&self) -> usize {
        self.value.len().next_multiple_of(4)
    }
    fn sort_key(&self) -> (u8, usize, &[u8]) {
        (self.index, self.name.len(), &self.name)
    }
}

/// Converts a POSIX ACL from the xattr interface's form (version 2, 8-byte
/// entries) to ext4's (version 1, 4-byte entries for owner, group, mask and
/// other; 8-byte ones for named users and groups).
fn acl_to_disk(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) || value[..4] != 2u32.to_le_bytes() {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => out.extend_from_slice(&e[..4]),
            0x02 | 0x08 => out.extend_from_slice(e),
            _ => return None,
        }
    }
    Some(out)
}

/// Maps caller xattrs to disk form, sorted as the kernel expects in blocks
/// (by index, name length, name).
pub fn to_disk(xattrs: &[Xattr]) -> Result<Vec<DiskXattr>, Error> {
    let mut out = Vec::with_capacity(xattrs.len());
    for x in xattrs {
        let (prefix, index, exact) = PREFIXES
            .iter()
            .find(|(p, _, exact)| {
                if *exact {
                    x.name == *p
                } else {
                    x.name.starts_with(p)
                }
            })
            .ok_or_else(|| {
                Error::path(
                    b"",
                    format!(
                        "has xattr {:?} outside the user, trusted, security and system namespaces",
                        String::from_utf8_lossy(&x.name)
                    ),
                )
            })?;
        let name = x.name[prefix.len()..].to_vec();
        if !*exact && (name.is_empty() || name.len() > 255) {
            return Err(Error::path(
                b"",
                format!(
                    "has an xattr with an invalid name {:?}",
                    String::from_utf8_lossy(&x.name)
                ),
            ));
        }
        let value = if *exact {
            acl_to_disk(&x.value).ok_or_else(|| Error::path(b"", "has a malformed POSIX ACL"))?
        } else {
            x.value.clone()
        };
        out.push(DiskXattr {
            index: *index,
            name,
            value,
        });
    }
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    out.dedup_by(|a, b| a.index == b.index && a.name == b.name);
    Ok(out)
}

/// The kernel's per-entry hash over name and value words.
fn entry_hash(x: &DiskXattr) -> u32 {
    let mut hash = 0u32;
    for &c in &x.name {
        hash = (hash << 5) ^ (hash >> 27) ^ u32::from(c);
    }
    let mut padded = x.value.clone();
    padded.resize(x.value_size(), 0);
    for w in padded.chunks_exact(4) {
        hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(w.try_into().unwrap());
    }
    hash
}

fn put_entry(buf: &mut [u8], at: usize, x: &DiskXattr, value_offs: usize) {
    buf[at] = x.name.len() as u8;
    buf[at + 1] = x.index;
    let offs = if x.value.is_empty() {
        0
    } else {
        value_offs as u16
    };
    buf[at + 2..at + 4].copy_from_slice(&offs.to_le_bytes());
    buf[at + 4..at + 8].fill(0);
    buf[at + 8..at + 12].copy_from_slice(&(x.value.len() as u32).to_le_bytes());
    buf[at + 12..at + 16].copy_from_slice(&entry_hash(x).to_le_bytes());
    buf[at + 16..at + 16 + x.name.len()].copy_from_slice(&x.name);
}

/// Where an inode's xattrs go.
pub struct Placement {
    /// The in-inode area (empty when there are none there).
    pub inline: Vec<u8>,
    /// The contents of the xattr block, without its checksum (which depends on
    /// where it lands), if some did not fit in the inode.
    pub block: Option<Vec<u8>>,
}

/// Fills the inode's spare space in order, the rest goes into a block.
pub fn place(xattrs: &[DiskXattr]) -> Result<Placement, Error> {
    // Space after the magic: entries, a 4-byte terminator, values.
    let inline_room = INODE_SIZE - INLINE_XATTR_OFFSET - 4;
    let mut used = 4;
    let mut split = 0;
    for x in xattrs {
        let need = x.entry_size() + x.value_size();
        if used + need > inline_room {
            break;
        }
        used += need;
        split += 1;
    }
    let (inline_part, block_part) = xattrs.split_at(split);
    let inline = if inline_part.is_empty() {
        Vec::new()
    } else {
        let mut buf = vec![0u8; INODE_SIZE - INLINE_XATTR_OFFSET];
        buf[..4].copy_from_slice(&MAGIC.to_le_bytes());
        let area = &mut buf[4..];
        let (mut at, mut end) = (0, area.len());
        for x in inline_part {
            end -= x.value_size();
            area[end..end + x.value.len()].copy_from_slice(&x.value);
            put_entry(area, at, x, end);
            at += x.entry_size();
        }
        buf
    };
    let block = if block_part.is_empty() {
        None
    } else {
        let need: usize = BLOCK_HEADER
            + 4
            + block_part
                .iter()
                .map(|x| x.entry_size() + x.value_size())
                .sum::<usize>();
        if need > BLOCK_SIZE {
            return Err(Error::path(b"", format!("has {need} bytes of xattrs; at most about {BLOCK_SIZE} fit in an ext4 xattr block")));
        }
        let mut buf = vec![0u8; BLOCK_SIZE];
        buf[..4].copy_from_slice(&MAGIC.to_le_bytes());
        buf[4..8].copy_from_slice(&1u32.to_le_bytes()); // refcount, set when written
        buf[8..12].copy_from_slice(&1u32.to_le_bytes()); // h_blocks
        let (mut at, mut end) = (BLOCK_HEADER, BLOCK_SIZE);
        let mut block_hash = 0u32;
        for x in block_part {
            end -= x.value_size();
            buf[end..end + x.value.len()].copy_from_slice(&x.value);
            put_entry(&mut buf, at, x, end);
            at += x.entry_size();
            block_hash = (block_hash << 16) ^ (block_hash >> 16) ^ entry_hash(x);
        }
        buf[12..16].copy_from_slice(&block_hash.to_le_bytes());
        Some(buf)
    };
    Ok(Placement { inline, block })
}

/// Finishes a block for its place on disk: reference count and checksum.
pub fn seal_block(block: &mut [u8], refcount: u32, block_nr: u32, fs_seed: u32) {
    block[4..8].copy_from_slice(&refcount.to_le_bytes());
    block[16..20].fill(0);
    let csum = crc32c_raw(
        crc32c_raw(fs_seed, &u64::from(block_nr).to_le_bytes()),
        block,
    );
    block[16..20].copy_from_slice(&csum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(name: &str, value: &[u8]) -> Xattr {
        Xattr {
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn acl_is_compacted() {
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let d = to_disk(&[x("system.posix_acl_access", &acl)]).unwrap();
        assert_eq!(d[0].index, 2);
        assert_eq!(d[0].value.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert!(to_disk(&[x("system.posix_acl_access", b"junk")]).is_err());
    }

    #[test]
    fn unknown_namespaces_are_refused() {
        assert!(to_disk(&[x("com.apple.quarantine", b"1")]).is_err());
    }

    #[test]
    fn overflow_goes_to_a_block() {
        let d = to_disk(&[
            x("user.a", &[1; 40]),
            x("user.b", &[2; 40]),
            x("security.capability", &[3; 20]),
        ])
        .unwrap();
        let p = place(&d).unwrap();
        assert!(!p.inline.is_empty());
        assert!(p.block.is_some());
        let big = to_disk(&[x("user.big", &[0; 5000])]).unwrap();
        assert!(place(&big).is_err());
    }
}
