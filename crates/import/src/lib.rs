//! builderd-import: reads a source tree into the ext4 writer: a directory on
//! the host, or a tar archive (plain, gzip or zstd; PAX and GNU headers,
//! `SCHILY.xattr.*`, GNU sparse files). The writer gets entries and file data
//! as they are read; nothing is unpacked to disk.

pub mod decompress;
mod dir;
mod readahead;
mod tar;
mod tarstream;

pub use dir::import_dir;
pub use readahead::{Chunk, Chunks, Lane, ReadAhead};
pub use tar::{import_tar, Entry, EntryKind, TarReader};

/// Reports progress: bytes of input consumed so far (file data for a
/// directory, archive bytes for a tar) and entries done.
pub trait Progress {
    fn update(&self, bytes: u64, entries: u64);
}

impl Progress for () {
    fn update(&self, _: u64, _: u64) {}
}

/// What went wrong reading the source; always names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(transparent)]
    Ext4(#[from] builderd_ext4::Error),
}

impl Error {
    fn io(path: impl AsRef<[u8]>, source: std::io::Error) -> Self {
        Error::Io {
            path: builderd_ext4::display_path(path.as_ref()),
            source,
        }
    }
    fn invalid(path: impl AsRef<[u8]>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            path: builderd_ext4::display_path(path.as_ref()),
            reason: reason.into(),
        }
    }
}
