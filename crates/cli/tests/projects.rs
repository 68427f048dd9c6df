//! `builderd build dir:PATH` and `git:PATH#REF`: a project built by its
//! Containerfile with buildah (FROM an image the test pushes to a registry
//! on loopback, RUN isolated as build steps are), then written as any image
//! is. Each image is e2fsck-checked. Needs root, buildah, runc and git.

mod common;

use std::path::Path;
use std::process::Command;

use common::images::{build, make_image};
use common::registry::TestRegistry;
use common::*;
use serde_json::{json, Value};

/// A busybox image on a registry of the test's; answers its reference.
fn base_image(reg: &TestRegistry, dir: &Path) -> String {
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

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
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

fn steps_dir(dir: &Path) -> String {
    dir.join("steps").display().to_string()
}

fn debugfs_cat(image: &Path, path: &str) -> String {
    let o = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_directory_and_a_git_ref_build_by_their_containerfile() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("app.txt"), "version one\n").unwrap();
    std::fs::write(
        repo.join("Dockerfile"),
        format!(
            "FROM {base}\nARG GREETING=unset\nCOPY app.txt /app/app.txt\n\
             RUN echo \"$GREETING\" > /app/greeting && id -u > /app/uid\n\
             CMD [\"cat\", \"/app/app.txt\"]\n"
        ),
    )
    .unwrap();

    // The directory as it is, with a build argument.
    let out = dir.path().join("dir.ext4");
    let o = build(
        &format!("dir:{}", repo.display()),
        &out,
        &[
            "--steps-dir",
            &steps_dir(dir.path()),
            "--build-arg",
            "GREETING=hello",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);
    assert_eq!(debugfs_cat(&out, "/app/app.txt"), "version one\n");
    assert_eq!(debugfs_cat(&out, "/app/greeting"), "hello\n");
    // RUN ran as root in its namespace.
    assert_eq!(debugfs_cat(&out, "/app/uid"), "0\n");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("dir.ext4.json")).unwrap()).unwrap();
    assert_eq!(meta["config"]["cmd"], json!(["cat", "/app/app.txt"]));
    assert!(meta.get("source_commit").is_none());

    // A Git repository: a tag and a later commit on its branch.
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("app.txt"), "version two\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    // Not committed: the build sees the commit, not the working tree.
    std::fs::write(repo.join("app.txt"), "uncommitted\n").unwrap();
    for (reference, text, commit) in [
        ("#v1", "version one\n", &first),
        ("#main", "version two\n", &second),
        ("", "version two\n", &second),
        (&format!("#{}", &first[..8]), "version one\n", &first),
    ] {
        let out = dir.path().join("git.ext4");
        let o = build(
            &format!("git:{}{reference}", repo.display()),
            &out,
            &["--steps-dir", &steps_dir(dir.path())],
        );
        assert!(
            o.status.success(),
            "{reference}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        e2fsck(&out);
        assert_eq!(debugfs_cat(&out, "/app/app.txt"), text, "{reference}");
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("git.ext4.json")).unwrap())
                .unwrap();
        assert_eq!(meta["source_commit"], commit.as_str(), "{reference}");
    }
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn bad_projects_fail_with_what_was_wrong() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("README"), "no Containerfile here\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let fails = |source: String, extra: &[&str], expected: &str| {
        let out = dir.path().join("bad.ext4");
        let mut args = vec!["--steps-dir".to_string(), steps_dir(dir.path())];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = build(&source, &out, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{source} built");
        assert!(
            err.contains(expected),
            "{source}: {expected:?} not in:\n{err}"
        );
        assert!(!out.exists(), "{source} left an image");
    };
    let git_source = format!("git:{}", repo.display());
    fails(
        git_source.clone(),
        &[],
        "looked for Dockerfile and Containerfile",
    );
    fails(
        format!("{git_source}#nope"),
        &[],
        "no branch, tag or commit \"nope\"",
    );
    fails(
        format!("{git_source}#--upload-pack=touch"),
        &[],
        "is not a Git ref",
    );
    fails(
        format!("dir:{}", repo.display()),
        &["--dockerfile", "../outside"],
        "Containerfile \"../outside\"",
    );
    // A failing RUN: its command's exit code and output in the error.
    std::fs::write(
        repo.join("Dockerfile"),
        format!("FROM {base}\nRUN echo about-to-fail && exit 7\n"),
    )
    .unwrap();
    fails(format!("dir:{}", repo.display()), &[], "about-to-fail");
}
