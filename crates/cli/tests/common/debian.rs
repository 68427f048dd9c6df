//! A Debian 12 base image with Node.js, npm and Python, made from Debian's
//! packages by debootstrap (from the Debian mirror, the only one this
//! machine reaches) once per machine and kept as a tar in
//! /var/tmp/builderd-tests: a minute to make, reused by every later run.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use super::images::make_image;
use super::registry::TestRegistry;

const KEPT: &str = "/var/tmp/builderd-tests";
/// Named by what it holds: a change of the recipe makes a new one.
const TAR: &str = "bookworm-node-npm-python-venv-1.tar";

/// The tar of the root filesystem, made if this machine has none yet
/// (under a lock, for test binaries running at once).
fn rootfs_tar() -> PathBuf {
    std::fs::create_dir_all(KEPT).unwrap();
    let tar = PathBuf::from(KEPT).join(TAR);
    let script = format!(
        "set -e; cd {KEPT}; [ -s {TAR} ] && exit 0; rm -rf root; \
         debootstrap --variant=minbase --include=nodejs,python3,python3-venv,ca-certificates \
           bookworm root http://deb.debian.org/debian >debootstrap.log 2>&1; \
         chroot root apt-get install -y -qq --no-install-recommends npm >>debootstrap.log 2>&1; \
         chroot root npm --version >/dev/null; \
         rm -rf root/var/cache/apt/archives/*.deb root/var/lib/apt/lists/* root/usr/share/doc \
           root/usr/share/man root/usr/share/info; \
         tar -C root --numeric-owner -cf {TAR}.part . && mv {TAR}.part {TAR} && rm -rf root"
    );
    let o = Command::new("flock")
        .arg(format!("{KEPT}/lock"))
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "making the Debian base failed (see {KEPT}/debootstrap.log): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    tar
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
