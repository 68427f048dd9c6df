//! Debian 12 images from `scripts/debian-tree` (debootstrap from the Debian
//! mirror, the only one this machine reaches, once per machine; kept as
//! tars in /var/tmp/builderd-tests). One has Node.js, npm and Python; the
//! other build tools, Python, systemd and openssh, and an app packaged as
//! a .deb.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::images::make_image;
use super::registry::TestRegistry;

/// `scripts/debian-tree RECIPE`: the tree's tar, made if this machine has
/// none yet.
fn debian_tree(recipe: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/debian-tree");
    let o = Command::new(script).arg(recipe).output().unwrap();
    assert!(
        o.status.success(),
        "making the Debian tree {recipe} failed (see /var/tmp/builderd-tests/debootstrap.log): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

fn rootfs_tar() -> PathBuf {
    debian_tree("node-python")
}

/// A Debian tree as a build machine leaves it: build-essential, Python,
/// systemd and openssh (host keys and a machine-id made by their
/// packages), docs, apt's lists, and `hello-app`, a package of the test's
/// whose app needs Python and, as such packages sometimes do, a
/// development package (linux-libc-dev).
pub fn build_tools_tar() -> PathBuf {
    debian_tree("build-tools")
}

/// The Debian base image on `reg`, with a history as builders write;
/// answers its reference.
pub fn node_python_base(reg: &TestRegistry, dir: &std::path::Path) -> String {
    let layout = dir.join("debian-layout");
    make_image(
        &layout,
        json!({"tag": "v1", "history": true,
               "layers": [{"compression": "none", "tar": rootfs_tar()}],
               "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}}),
    );
    reg.push(&layout, "v1", "debian-node-python:12", None);
    format!("{}/debian-node-python:12", reg.addr)
}
