//! Archive sources (`archive:FILE`): archives made by real producers
//! (Debian's zip and tar with gzip, xz and zstd, Python's zipfile with data
//! descriptors and backslash names, git archive) extract to the same tree;
//! a static site runs no build step and serves from its directory in a
//! microVM; a Node app from a zip and a Python app from a tar.xz install
//! their dependencies from package indexes the test runs, build and boot;
//! and a hostile corpus is refused entry by entry, nothing written outside
//! the build's directory, memory bounded. Fixtures: fixtures/mkarchives.py.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::debian::node_python_base;
use common::images::build;
use common::package_index::PackageIndex;
use common::projects::{boot, busybox_image, metadata};
use common::registry::TestRegistry;
use common::*;
use serde_json::json;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mkarchives.py")
}

/// Writes `files` (name, text, mode) under `dir`.
fn tree(dir: &Path, files: &[(&str, &str, u32)]) {
    use std::os::unix::fs::PermissionsExt;
    for (name, text, mode) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
}

/// The tree under `at` in `image`, dumped by debugfs: each file's path,
/// mode and content, each symlink's target.
fn image_tree(image: &Path, at: &str) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let out = tempfile::tempdir().unwrap();
    run(Command::new("debugfs")
        .args(["-R", &format!("rdump {at} {}", out.path().display())])
        .arg(image));
    let root = out.path().join(at.rsplit('/').next().unwrap());
    let mut found = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(&root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                pending.push(path);
                format!("dir {:o}", meta.mode() & 0o7777)
            } else if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else {
                format!(
                    "file {:o} {}",
                    meta.mode() & 0o7777,
                    std::fs::read_to_string(&path).unwrap()
                )
            };
            found.insert(rel, what);
        }
    }
    found
}

const SITE: &[(&str, &str, u32)] = &[
    ("index.html", "<h1>hello from an archive</h1>\n", 0o644),
    ("css/site.css", "h1 { color: teal }\n", 0o644),
    ("js/deep/er/app.js", "console.log('app')\n", 0o644),
    (
        "bin/serve.sh",
        "#!/bin/sh\nexec httpd -f -p 80 -h /app\n",
        0o755,
    ),
];

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn archives_from_each_producer_give_the_same_tree_and_a_site_serves_without_a_build() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = busybox_image(&reg, dir.path(), "web", json!({"Env": ["PATH=/bin"]}), true);
    let src = dir.path().join("site");
    tree(&src, SITE);
    std::os::unix::fs::symlink("index.html", src.join("home.html")).unwrap();
    let archives = dir.path().join("archives");
    run(Command::new("python3")
        .arg(fixture())
        .arg("producers")
        .arg(&src)
        .arg(&archives));
    let mut trees = Vec::new();
    for (file, format) in [
        ("debian.zip", "zip"),
        ("debian.tar.gz", "tar.gz"),
        ("debian.tar.xz", "tar.xz"),
        ("debian.tar.zst", "tar.zst"),
        ("python.zip", "zip"),
        ("git.tar.gz", "tar.gz"),
        ("git.zip", "zip"),
    ] {
        let out = dir.path().join(format!("{file}.ext4"));
        let o = build(
            &format!("archive:{}", archives.join(file).display()),
            &out,
            &["--base-image", &base],
        );
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{file}: {log}");
        assert!(log.contains("nothing to build"), "{file}: {log}");
        e2fsck(&out);
        let meta = metadata(&out);
        assert_eq!(meta["archive"]["format"], format, "{file}");
        assert_eq!(meta["archive"]["built"], false, "{file}");
        assert_eq!(meta["archive"]["runtime"], "static", "{file}");
        assert_eq!(meta["run_config"]["working_dir"], "/app", "{file}");
        let mut got = image_tree(&out, "/app");
        // Python's zipfile was given no symlink (it keeps none).
        if file != "python.zip" {
            assert_eq!(
                got.remove("home.html").as_deref(),
                Some("link index.html"),
                "{file}"
            );
        }
        trees.push((file, got));
    }
    for (file, got) in &trees[1..] {
        assert_eq!(got, &trees[0].1, "{file} differs from {}", trees[0].0);
    }
    let t = &trees[0].1;
    assert_eq!(t["bin/serve.sh"].split(' ').nth(1), Some("755"), "{t:?}");
    assert_eq!(
        t["index.html"], "file 644 <h1>hello from an archive</h1>\n",
        "{t:?}"
    );
    assert!(t.contains_key("js/deep/er/app.js"), "{t:?}");
    // The same archive gives the same image, byte for byte.
    let again = dir.path().join("again.ext4");
    let o = build(
        &format!("archive:{}", archives.join("debian.tar.gz").display()),
        &again,
        &["--base-image", &base],
    );
    assert!(o.status.success());
    assert_eq!(
        metadata(&again)["image"]["sha256"],
        metadata(&dir.path().join("debian.tar.gz.ext4"))["image"]["sha256"]
    );
    // It boots, and busybox's httpd serves the site from /app.
    let served = dir.path().join("served.ext4");
    let o = build(
        &format!("archive:{}", archives.join("git.zip").display()),
        &served,
        &[
            "--base-image",
            &base,
            "--entrypoint",
            r#"["/bin/sh", "-c", "ip link set lo up; httpd -p 127.0.0.1:80 -h /app && wget -q -O - http://127.0.0.1/index.html"]"#,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (console, exit) = boot(&served);
    assert!(console.contains("hello from an archive"), "{console}");
    assert_eq!(exit, Some(0), "{console}");
}

#[test]
fn hostile_archives_are_refused_by_entry_and_rule_and_write_nothing_outside() {
    let dir = tmp();
    let corpus = dir.path().join("corpus");
    run(Command::new("python3")
        .arg(fixture())
        .arg("hostile")
        .arg(&corpus));
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(corpus.join("cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 15);
    let passwd = std::fs::read("/etc/passwd").unwrap();
    // A zip whose top shows nothing to build is read straight into the
    // image, checked on the way: the runtime's image must be there first.
    let reg = TestRegistry::start(None);
    let base = busybox_image(&reg, dir.path(), "web", json!({"Env": ["PATH=/bin"]}), true);
    for case in &cases {
        let file = case["file"].as_str().unwrap();
        let rule = case["rule"].as_str().unwrap();
        let work = dir.path().join(format!("{file}.work"));
        let canary = dir.path().join(format!("{file}.canary"));
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&canary).unwrap();
        let out = work.join("out.ext4");
        let mut cmd = Command::new("/usr/bin/time");
        cmd.args(["-f", "peak-rss-kb %M"])
            .arg(env!("CARGO_BIN_EXE_builderd"))
            .arg("build")
            .arg(format!("archive:{}", corpus.join(file).display()))
            .arg("-o")
            .arg(&out)
            .args(["--runtime", "script", "--base-image", &base]);
        match file {
            "says-gzip.tar" => cmd.args(["--archive-type", "tar.gz"]),
            // 10,000 names imply 630,000 directories: counted, they pass a
            // limit the names alone stay under.
            "implied-dirs.tar" => cmd.args(["--archive-max-entries", "50000"]),
            _ => &mut cmd,
        };
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{file} was taken:\n{err}");
        assert!(err.contains(rule), "{file}: {rule:?} not in\n{err}");
        let rss: u64 = err
            .lines()
            .find_map(|l| l.strip_prefix("peak-rss-kb "))
            .and_then(|v| v.trim().parse().ok())
            .expect("time's line");
        println!(
            "{file}: refused, peak RSS {rss} KiB: {}",
            err.lines()
                .find(|l| l.starts_with("builderd: error:"))
                .unwrap_or("")
        );
        assert!(rss < 64 << 10, "{file}: peak RSS {rss} KiB");
        // Nothing beside the output, nothing in the canary beside that,
        // nothing where the names pointed.
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "{file}");
        assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 0, "{file}");
    }
    assert!(!dir.path().join("escaped.txt").exists());
    assert!(!Path::new("/tmp/builderd-absolute.txt").exists());
    assert!(!Path::new("/etc/builderd-evil").exists());
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn node_and_python_apps_from_archives_install_build_and_boot() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = node_python_base(&reg, dir.path());
    let index = PackageIndex::start(dir.path());
    index.publish_greetings();
    let table = index.base_images(&base);
    let node = dir.path().join("node-app");
    tree(
        &node,
        &[
            (
                "package.json",
                r#"{"name": "app", "version": "1.0.0",
                    "dependencies": {"builderd-greeting": "1.0.0"},
                    "scripts": {"build": "node build.js"}}"#,
                0o644,
            ),
            (
                "build.js",
                "require('fs').writeFileSync('built.txt', 'built by npm run build');\n",
                0o644,
            ),
            (
                "index.js",
                "const fs = require('fs');\n\
                 console.log(require('builderd-greeting')('node'), fs.readFileSync('built.txt', 'utf8'));\n\
                 process.exit(4);\n",
                0o644,
            ),
        ],
    );
    run(Command::new("zip")
        .args(["-q", "-r", "../node-app.zip", "."])
        .current_dir(&node));
    let python = dir.path().join("python-app");
    tree(
        &python,
        &[
            ("requirements.txt", "builderd-greeting==1.0.0\n", 0o644),
            (
                "main.py",
                "import sys, builderd_greeting\nprint(builderd_greeting.hello('python'))\nsys.exit(5)\n",
                0o644,
            ),
        ],
    );
    run(Command::new("tar")
        .args(["-cJf", "../python-app.tar.xz", "."])
        .current_dir(&python));
    let mut args = index.build_options(&dir.path().join("steps"), &table);
    args.push("--cache-dependencies".into());
    for (archive, runtime, version, expected, code) in [
        (
            "node-app.zip",
            "node",
            "18",
            "hello node from builderd-greeting built by npm run build",
            4,
        ),
        (
            "python-app.tar.xz",
            "python",
            "3.11",
            "hello python from builderd_greeting",
            5,
        ),
    ] {
        let out = dir.path().join(format!("{runtime}.ext4"));
        let mut these = args.clone();
        these.extend(["--runtime", runtime, "--version", version].map(String::from));
        let these: Vec<&str> = these.iter().map(String::as_str).collect();
        let o = build(
            &format!("archive:{}", dir.path().join(archive).display()),
            &out,
            &these,
        );
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{runtime}: {log}");
        e2fsck(&out);
        let meta = metadata(&out);
        assert_eq!(meta["archive"]["built"], true, "{runtime}");
        assert_eq!(meta["generated"]["stack"], runtime);
        let containerfile = meta["generated"]["containerfile"].as_str().unwrap();
        assert!(
            containerfile.find("RUN ").unwrap() < containerfile.find("COPY . .").unwrap(),
            "dependencies install before the sources are copied:\n{containerfile}"
        );
        let (console, exit) = boot(&out);
        assert!(console.contains(expected), "{runtime}: {console}");
        assert_eq!(exit, Some(code), "{runtime}: {console}");
    }
    // The node app again: its dependency layer comes from the cache.
    let o = build(
        &format!("archive:{}", dir.path().join("node-app.zip").display()),
        &dir.path().join("node-again.ext4"),
        &args
            .iter()
            .map(String::as_str)
            .chain(["--runtime", "node", "--version", "18"])
            .collect::<Vec<_>>(),
    );
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("Using cache"), "{log}");
}
