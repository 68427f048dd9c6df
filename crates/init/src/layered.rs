//! What the build side and the init share of an image whose layers are
//! kept (`preserve_layers`): the top disk (`/dev/vda`) holds, under
//! `/.builderd/`, this init, [`LAYERS_PATH`], and the overlay's upper and
//! work directories; each layer is a read-only disk after it. The init
//! mounts the layers as the overlay's lower directories, makes the overlay
//! the root and starts the image's init there (the merged tree has its own
//! `/.builderd/` from the upper directory).

use serde::{Deserialize, Serialize};

/// The layers and the init to start once they are mounted.
pub const LAYERS_PATH: &str = "/.builderd/layers.json";
/// On the top disk: the overlay's upper and work directories, where each
/// lower layer is mounted, and where the overlay is.
pub const UPPER_DIR: &str = "/.builderd/upper";
pub const WORK_DIR: &str = "/.builderd/work";
pub const LOWER_DIR: &str = "/.builderd/lower";
pub const MERGED_DIR: &str = "/.builderd/merged";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layers {
    /// The layer disks, the image's first layer first.
    pub devices: Vec<String>,
    /// The init to start in the merged tree.
    pub init: String,
}

/// The block device of the `n`th disk after the top one (0: `/dev/vdb`).
pub fn device(n: usize) -> String {
    let mut name = String::new();
    // virtio-blk names: vdb … vdz, vdaa …, as the kernel counts them.
    let mut i = n + 1;
    loop {
        name.insert(0, (b'a' + (i % 26) as u8) as char);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    format!("/dev/vd{name}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn virtio_names() {
        assert_eq!(super::device(0), "/dev/vdb");
        assert_eq!(super::device(24), "/dev/vdz");
        assert_eq!(super::device(25), "/dev/vdaa");
        assert_eq!(super::device(26), "/dev/vdab");
    }
}
