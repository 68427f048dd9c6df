//! builderd-archive: an archive a tenant hands over (zip, tar, tar.gz,
//! tar.xz, tar.zst), the most hostile input builderd takes, read once as it
//! streams and extracted beneath a directory, or handed on as a tar stream
//! (to become an image layer without touching the disk). Nothing in it is trusted:
//! its format is told by its first bytes; names are made plain or refused
//! (absolute, `..`, drive letters, backslash forms); links must stay inside
//! the tree and nothing is written through one; sizes, CRCs and entry
//! counts are checked against what is read, never taken from headers; the
//! limits (bytes, entries, one entry's size, depth, compression ratio) each
//! name themselves when passed; and the kernel itself holds every write
//! beneath the directory (`openat2` with `RESOLVE_BENEATH`). Devices and
//! fifos are left out and setuid, setgid and sticky bits cleared, each told.

mod beneath;
mod dest;
mod entries;
mod error;
mod extract;
mod format;
mod limits;
mod names;
mod peek;
mod seen;
mod tar_entries;
mod zip_end;
mod zip_entries;

pub use entries::Extracted;
pub use error::Error;
pub use extract::{extract, sha256, stream, Options};
pub use format::Format;
pub use limits::{Limits, MAX_NAME_BYTES, RATIO_FLOOR};
pub use peek::{top, Top};
