//! The first stage on the top disk of an image whose layers are kept
//! (`builderd_init::layered`): mount each layer disk read-only, the overlay
//! of them with the top disk's upper directory over it, and start the
//! image's init in the overlay. Only returns on failure.

use std::path::Path;

use builderd_init::layered::{LOWER_DIR, MERGED_DIR, UPPER_DIR, WORK_DIR};
use builderd_init::Layers;

use crate::initramfs::{enter, wait_for, Never};
use crate::sys::mount;

pub fn run(layers: &Layers) -> Result<Never, String> {
    // Booted without builderd's initramfs, the kernel may not have mounted
    // /dev; the disks are found there.
    if !Path::new("/dev/null").exists() {
        let _ = std::fs::create_dir_all("/dev");
        mount("devtmpfs", "/dev", "devtmpfs", 0, "")
            .map_err(|e| format!("cannot mount /dev: {e}"))?;
    }
    let mut lowers = Vec::new();
    for (i, dev) in layers.devices.iter().enumerate() {
        wait_for(dev)?;
        let at = format!("{LOWER_DIR}/{i}");
        std::fs::create_dir_all(&at).map_err(|e| format!("cannot make {at}: {e}"))?;
        mount(dev, &at, "ext4", libc::MS_RDONLY, "")
            .map_err(|e| format!("cannot mount the layer disk {dev} on {at}: {e}"))?;
        lowers.push(at);
    }
    // overlayfs takes the uppermost lower directory first.
    lowers.reverse();
    for dir in [UPPER_DIR, WORK_DIR, MERGED_DIR] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {dir}: {e}"))?;
    }
    let options = format!(
        "lowerdir={},upperdir={UPPER_DIR},workdir={WORK_DIR}",
        lowers.join(":")
    );
    mount("overlay", MERGED_DIR, "overlay", 0, &options).map_err(|e| {
        format!("cannot mount the image's layers as an overlay ({options}): {e}; the kernel needs overlayfs (CONFIG_OVERLAY_FS)")
    })?;
    enter(MERGED_DIR, &layers.init)
}
