//! What a caller describes: the metadata of one entry of the tree.

/// A point in time with nanoseconds, seconds relative to the Unix epoch
/// (negative before 1970).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub const fn new(secs: i64, nanos: u32) -> Self {
        Timestamp { secs, nanos }
    }
}

/// One extended attribute, by its full name (`user.x`, `security.capability`,
/// `system.posix_acl_access`, ...). POSIX ACL values are in the form the
/// kernel's xattr interface and tar archives use; the writer converts them to
/// ext4's on-disk form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Owner, permissions, times and xattrs of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`0o7777`); the
    /// file type comes from the kind of entry.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub xattrs: Vec<Xattr>,
}

impl Metadata {
    /// Owned by root, with every time at `secs` and no xattrs: what an entry
    /// gets that no source describes.
    pub fn root_owned(mode: u16, secs: i64) -> Metadata {
        let t = Timestamp::new(secs, 0);
        Metadata {
            mode,
            uid: 0,
            gid: 0,
            atime: t,
            mtime: t,
            ctime: t,
            xattrs: Vec::new(),
        }
    }
}

/// Character or block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    Char,
    Block,
}
