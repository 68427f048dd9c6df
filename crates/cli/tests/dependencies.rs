//! Node and Python projects without a Containerfile, their dependencies
//! installed from package indexes the test runs (verdaccio, pypiserver) on
//! a test host the build's egress network reaches, on a Debian base made
//! from Debian's packages; each rootfs booted, the app printing what its
//! dependency answers. Needs root, buildah, runc, debootstrap, QEMU and
//! what scripts/setup installs for the tests.

mod common;

use std::path::Path;

use common::debian::node_python_base;
use common::images::build;
use common::package_index::PackageIndex;
use common::projects::{boot, debugfs_cat, metadata};
use common::registry::TestRegistry;
use common::*;

/// Writes `files` into `dir`; answers the project's source.
fn project(dir: &Path, files: &[(&str, &str)]) -> String {
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    format!("dir:{}", dir.display())
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn node_and_python_apps_install_from_a_package_index_and_boot() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = node_python_base(&reg, dir.path());
    let index = PackageIndex::start(dir.path());
    index.publish_greetings();
    let table = index.base_images(&base);
    let args = index.build_options(&dir.path().join("steps"), &table);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let node = project(
        &dir.path().join("node-app"),
        &[
            (
                "package.json",
                r#"{"name": "app", "version": "1.0.0", "engines": {"node": "18"},
                    "dependencies": {"builderd-greeting": "1.0.0"}}"#,
            ),
            (
                "index.js",
                "console.log(require('builderd-greeting')('node')); process.exit(4);\n",
            ),
        ],
    );
    let python = project(
        &dir.path().join("python-app"),
        &[
            ("requirements.txt", "builderd-greeting==1.0.0\n"),
            (".python-version", "3.11\n"),
            (
                "main.py",
                "import sys, builderd_greeting\nprint(builderd_greeting.hello('python'))\nsys.exit(5)\n",
            ),
        ],
    );
    for (source, stack, installed, expected, code) in [
        (
            &node,
            "node",
            "/app/node_modules/builderd-greeting/index.js",
            "hello node from builderd-greeting",
            4,
        ),
        (
            &python,
            "python",
            "/opt/venv/lib/python3.11/site-packages/builderd_greeting.py",
            "hello python from builderd_greeting",
            5,
        ),
    ] {
        let out = dir.path().join(format!("{stack}.ext4"));
        let o = build(source, &out, &args);
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stack}: {log}");
        e2fsck(&out);
        assert_eq!(metadata(&out)["generated"]["stack"], stack);
        assert!(
            debugfs_cat(&out, installed).contains("builderd"),
            "{stack}: {installed} not installed"
        );
        let (console, exit) = boot(&out);
        assert!(console.contains(expected), "{stack}: {console}");
        assert_eq!(exit, Some(code), "{stack}: {console}");
    }
}
