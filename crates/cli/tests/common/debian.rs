//! Debian 12 images made from Debian's packages by debootstrap (from the
//! Debian mirror, the only one this machine reaches) once per machine and
//! kept as tars in /var/tmp/builderd-tests: a minute or two to make, reused
//! by every later run. One has Node.js, npm and Python; the other build
//! tools, Python, systemd and openssh, and an app packaged as a .deb.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use super::images::make_image;
use super::registry::TestRegistry;

const KEPT: &str = "/var/tmp/builderd-tests";
/// Named by what it holds: a change of the recipe makes a new one.
const TAR: &str = "bookworm-node-npm-python-venv-1.tar";

/// The build-tools image's tar, named by what it holds.
const TOOLS_TAR: &str = "bookworm-build-essential-python-systemd-ssh-hello-1.tar";

/// The tar of the root filesystem, made if this machine has none yet
/// (under a lock, for test binaries running at once).
fn rootfs_tar() -> PathBuf {
    kept_tar(
        TAR,
        "debootstrap --variant=minbase --include=nodejs,python3,python3-venv,ca-certificates \
           bookworm root http://deb.debian.org/debian >debootstrap.log 2>&1; \
         chroot root apt-get install -y -qq --no-install-recommends npm >>debootstrap.log 2>&1; \
         chroot root npm --version >/dev/null; \
         rm -rf root/var/cache/apt/archives/*.deb root/var/lib/apt/lists/* root/usr/share/doc \
           root/usr/share/man root/usr/share/info",
    )
}

/// A Debian tree as a build machine leaves it: build-essential, Python,
/// systemd and openssh (host keys and a machine-id made by their
/// packages), docs, apt's lists and downloaded packages, and `hello-app`, a
/// package of the test's whose app needs Python and, as such packages
/// sometimes do, a development package (linux-libc-dev).
pub fn build_tools_tar() -> PathBuf {
    kept_tar(
        TOOLS_TAR,
        r#"debootstrap --variant=minbase \
           --include=build-essential,python3,systemd,systemd-sysv,openssh-server \
           bookworm root http://deb.debian.org/debian >debootstrap.log 2>&1; \
         chroot root apt-get update -qq >>debootstrap.log 2>&1; \
         rm -rf pkg; mkdir -p pkg/DEBIAN pkg/usr/bin; \
         printf 'Package: hello-app\nVersion: 1.0\nArchitecture: all\nSection: web\nPriority: optional\nMaintainer: builderd tests <t@t>\nDepends: python3, linux-libc-dev\nDescription: the app of the docker strategy tests\n' >pkg/DEBIAN/control; \
         printf '#!/usr/bin/python3\nimport sys\nprint("hello-app: python", sys.version.split()[0])\n' >pkg/usr/bin/hello-app; \
         chmod 755 pkg/usr/bin/hello-app; \
         dpkg-deb --root-owner-group --build pkg root/tmp/hello-app.deb >>debootstrap.log; \
         chroot root dpkg -i /tmp/hello-app.deb >>debootstrap.log 2>&1; rm -rf pkg root/tmp/hello-app.deb; \
         [ -s root/etc/ssh/ssh_host_ed25519_key ] && [ -s root/etc/machine-id ]"#,
    )
}

/// `KEPT/NAME`, made by `recipe` (which makes the tree `root`) if this
/// machine has none yet, under a lock for test binaries running at once.
fn kept_tar(name: &str, recipe: &str) -> PathBuf {
    std::fs::create_dir_all(KEPT).unwrap();
    let tar = PathBuf::from(KEPT).join(name);
    let script = format!(
        "set -e; cd {KEPT}; [ -s {name} ] && exit 0; rm -rf root; {recipe}; \
         tar -C root --numeric-owner -cf {name}.part . && mv {name}.part {name} && rm -rf root"
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
