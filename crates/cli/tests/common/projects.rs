//! What the project tests share: a busybox base image on a registry of the
//! test's, `git` in a directory, and reading an image's files and metadata.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use super::images::make_image;
use super::registry::TestRegistry;

/// A busybox image on `reg`; answers its reference.
pub fn base_image(reg: &TestRegistry, dir: &Path) -> String {
    let layout = dir.join("base-layout");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"entries": [
            {"name": "bin", "type": "dir"},
            {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
            {"name": "bin/sh", "type": "symlink", "link": "busybox"},
        ]}], "config": {"Env": ["PATH=/bin"]}}),
    );
    reg.push(&layout, "v1", "base:v1", None);
    format!("{}/base:v1", reg.addr)
}

/// `git ARGS` in `dir` (a committer set); answers its output, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The file `path` of the ext4 image, as debugfs reads it ("" if absent).
pub fn debugfs_cat(image: &Path, path: &str) -> String {
    let o = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// OUT.json of the image `image`.
pub fn metadata(image: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(format!("{}.json", image.display())).unwrap()).unwrap()
}
