//! builderd-flatten: container image layers to one tree with overlay
//! semantics, written straight into the ext4 writer, never into an unpacked
//! directory.
//!
//! Layers are read newest first. The first version of a path met is final;
//! anything it masks (the same path, or anything below a non-directory, a
//! whiteout `.wh.NAME` or an opaque directory `.wh..wh..opq` of an upper
//! layer) is skipped without writing its data. Directories merge: a lower
//! layer's directory entry gives metadata to a directory that upper layers
//! only implied. Within one layer the last entry for a path wins.
//!
//! Hard links need care: a link in a lower layer whose target an upper layer
//! replaced still points at the lower content (go-containerregistry's
//! `mutate.Extract` gets this wrong). Links are resolved at the end; those
//! whose target's final version is from above them are written from the
//! target's content as of their own layer, by reading that layer again.
//!
//! Paths are normalised as umoci does: a leading `/` dropped, `.` removed,
//! `..` resolved lexically and never above the root. There is no host path
//! anywhere, so nothing is ever followed on the host. Inside the image, when
//! upper layers put entries under a parent that a lower layer turns out to
//! have as a symlink, they move to where the link points (resolved in the
//! image, never above its root), as extracting bottom-up would place them.
//!
//! An image whose layers are kept is written a layer at a time instead,
//! each as a disk in overlayfs's form (`write_layer`) over the [`Skeleton`]
//! of the layers below it.

mod layer;
mod layer_disk;
mod normalize;
mod overlay;
mod read_files;
mod select;
mod side_by_side;
mod skeleton;
mod tree_table;

pub use layer::{Adjust, Layer};
pub use layer_disk::{write_layer, LayerStats};
pub use normalize::normalize;
pub use overlay::{flatten, Stats};
pub use read_files::{read_files, Found};
pub use select::{Rule, Select, Verdict};
pub use skeleton::{Node, Skeleton};
pub use tree_table::{BadTable, PathKind};

/// What can go wrong flattening; names the layer and path concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("layer with digest {layer}: {source}")]
    Layer {
        layer: String,
        source: builderd_import::Error,
    },
    #[error("layer with digest {layer}: {source}")]
    Open {
        layer: String,
        source: std::io::Error,
    },
    #[error("layer with digest {layer}: {path}: {reason}")]
    Invalid {
        layer: String,
        path: String,
        reason: String,
    },
    #[error(transparent)]
    Ext4(#[from] builderd_ext4::Error),
}
