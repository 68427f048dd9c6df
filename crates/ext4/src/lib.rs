//! builderd-ext4: writes an ext4 filesystem image from a tree of entries, in
//! user space (no root, no mount, no external program).
//!
//! File data streams into contiguous extents as it arrives; inodes,
//! directories, bitmaps, group descriptors and the superblock are written
//! last, as hcsshim's tar2ext4 does. The image has 4 KiB blocks, 256-byte
//! inodes, extents, flex_bg, sparse_super, large_file, huge_file, dir_nlink,
//! extra_isize, metadata_csum, hashed directories and, by default, an empty
//! jbd2 journal. It knows nothing of tars, images or registries: callers
//! describe entries with [`Writer`] and call [`Writer::finish`].
//!
//! ```no_run
//! # fn main() -> Result<(), builderd_ext4::Error> {
//! use builderd_ext4::{Metadata, Options, Writer};
//! let file = std::fs::File::create("rootfs.ext4")?;
//! let mut w = Writer::new(file, Options { journal: true, ..Default::default() })?;
//! w.mkdir(b"etc", Metadata { mode: 0o755, ..Default::default() })?;
//! let mut f = w.file(b"etc/hostname", Metadata { mode: 0o644, ..Default::default() })?;
//! f.write(b"vm\n")?;
//! f.finish()?;
//! let (summary, _file) = w.finish()?;
//! println!("{} inodes", summary.inodes);
//! # Ok(()) }
//! ```

mod checksum;
mod content;
mod dir;
pub mod direct;
mod dirhash;
mod entry;
mod extent;
mod image;
mod inode;
mod journal;
mod lanes;
mod layout;
mod superblock;
mod target;
mod tree;
mod writer;
mod xattr;

pub use content::{ContentSink, FileData, InMemory};
pub use entry::{DeviceKind, Metadata, Timestamp, Xattr};
pub use lanes::{Lane, LaneFile, Lanes};
pub use layout::BLOCK_SIZE;
pub use target::Target;
pub use writer::{EntryKind, FileWriter, Free, Options, Summary, Writer};

/// What can go wrong while writing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something about one entry; names the entry.
    #[error("{}: {reason}", display_path(path))]
    Path { path: Vec<u8>, reason: String },
    #[error("the content does not fit: the filesystem size is {} bytes and the content needs at least {} bytes; give a larger --size", available_blocks * BLOCK_SIZE as u64, needed_blocks * BLOCK_SIZE as u64)]
    NoSpace {
        needed_blocks: u64,
        available_blocks: u64,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("writing the image: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn path(path: &[u8], reason: impl Into<String>) -> Self {
        Error::Path {
            path: path.to_vec(),
            reason: reason.into(),
        }
    }

    /// Replaces the path an entry error names (for errors raised where the
    /// full path was not at hand).
    pub(crate) fn at(self, path: &[u8]) -> Self {
        match self {
            Error::Path { reason, .. } => Error::Path {
                path: path.to_vec(),
                reason,
            },
            other => other,
        }
    }
}

/// A path for messages: as is when it is UTF-8, with escapes otherwise.
pub fn display_path(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(s) => s.to_string(),
        Err(_) => path.escape_ascii().to_string(),
    }
}
