//! What the project tests share: a busybox base image on a registry of the
//! test's, `git` in a directory, and reading an image's files and metadata.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::images::make_image;
use super::registry::TestRegistry;

/// A busybox image on `reg` (with a history, as builders write); answers
/// its reference.
pub fn base_image(reg: &TestRegistry, dir: &Path) -> String {
    busybox_image(reg, dir, "base", json!({"Env": ["PATH=/bin"]}), true)
}

/// A busybox image `NAME:v1` on `reg` with `config`, with a history or
/// without (its shell, and httpd, wget and ip for a static site's boot);
/// answers its reference.
pub fn busybox_image(
    reg: &TestRegistry,
    dir: &Path,
    name: &str,
    config: Value,
    history: bool,
) -> String {
    let layout = dir.join(format!("{name}-layout"));
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"entries": [
            {"name": "bin", "type": "dir"},
            {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
            {"name": "bin/sh", "type": "symlink", "link": "busybox"},
            {"name": "bin/httpd", "type": "symlink", "link": "busybox"},
            {"name": "bin/wget", "type": "symlink", "link": "busybox"},
            {"name": "bin/ip", "type": "symlink", "link": "busybox"},
        ]}], "config": config, "history": history}),
    );
    reg.push(&layout, "v1", &format!("{name}:v1"), None);
    format!("{}/{name}:v1", reg.addr)
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

/// Bare repositories under `srv` (lib.git, app.git) and what app.git's
/// refs point at.
pub struct Repos {
    pub srv: PathBuf,
    pub v1: String,
    pub feature: String,
    pub pull: String,
    pub main: String,
}

/// app.git: a Containerfile that writes its build args into the image, a
/// submodule `vendor/lib` (`../lib.git`), a 1 MiB file (so a second fetch
/// shows what the cache saved); an annotated tag v1, a branch feature, a
/// pull-request ref, and main one commit past v1.
pub fn make_repos(dir: &Path, base: &str) -> Repos {
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    for name in ["lib.git", "app.git"] {
        git(&srv, &["init", "-q", "--bare", name]);
    }
    let lib = dir.join("lib-work");
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(lib.join("lib.txt"), "library one\n").unwrap();
    git(&lib, &["init", "-q"]);
    git(&lib, &["add", "."]);
    git(&lib, &["commit", "-q", "-m", "lib"]);
    git(
        &lib,
        &["push", "-q", srv.join("lib.git").to_str().unwrap(), "main"],
    );

    let app = dir.join("app-work");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM {base}\nARG COMMIT=unset\nARG TAG=unset\nCOPY . /app\n\
             RUN echo \"$COMMIT\" > /app/commit && echo \"$TAG\" > /app/tag\n\
             CMD [\"cat\", \"/app/app.txt\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(app.join("app.txt"), "one\n").unwrap();
    let mut noise = Vec::with_capacity(1 << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while noise.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(app.join("blob.bin"), noise).unwrap();
    git(&app, &["init", "-q"]);
    git(
        &app,
        &[
            "remote",
            "add",
            "origin",
            srv.join("app.git").to_str().unwrap(),
        ],
    );
    git(
        &app,
        &["submodule", "add", "-q", "../lib.git", "vendor/lib"],
    );
    git(&app, &["add", "."]);
    git(&app, &["commit", "-q", "-m", "one"]);
    git(&app, &["tag", "-a", "v1", "-m", "release one"]);
    let v1 = git(&app, &["rev-parse", "HEAD"]);
    let commit = |text: &str| {
        std::fs::write(app.join("app.txt"), text).unwrap();
        git(&app, &["commit", "-q", "-am", text]);
        git(&app, &["rev-parse", "HEAD"])
    };
    git(&app, &["checkout", "-q", "-b", "feature"]);
    let feature = commit("feature\n");
    git(&app, &["checkout", "-q", "--detach", &v1]);
    let pull = commit("pull seven\n");
    git(&app, &["checkout", "-q", "main"]);
    let main = commit("main two\n");
    git(&app, &["push", "-q", "origin", "main", "feature", "v1"]);
    git(
        &app,
        &["push", "-q", "origin", &format!("{pull}:refs/pull/7/head")],
    );
    Repos {
        srv,
        v1,
        feature,
        pull,
        main,
    }
}

/// The owner (uid, gid) of `path` in the ext4 image, as debugfs reads it;
/// None if it is absent.
pub fn owner(image: &Path, path: &str) -> Option<(u32, u32)> {
    let o = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.contains("User:"))?;
    let field = |name: &str| -> u32 {
        let rest = &line[line.find(name).unwrap() + name.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    Some((field("User:"), field("Group:")))
}

/// Boots `image` in QEMU (`builderd boot`); answers its console and the
/// app's exit code.
pub fn boot(image: &Path) -> (String, Option<i32>) {
    let o = super::builderd()
        .args(["boot", "--timeout", "180"])
        .arg(image)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code(),
    )
}
