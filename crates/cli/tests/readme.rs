//! The README's quick start, run as written: its ```sh blocks in one bash
//! script, with only `IMAGE=` pointed at an image of the test's own. That
//! image is on a TLS registry at a public-looking address (added to `lo`,
//! its certificate trusted through SSL_CERT_FILE), so the service's default
//! outbound policy lets the build reach it with no flag the README lacks.

mod common;

use std::path::Path;
use std::process::Command;

use common::fake::LocalAddress;
use common::registry::TestRegistry;
use common::server::push_app;
use common::*;

/// The ```sh blocks of the README's "Quick start" section, in order.
fn quick_start(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Quick start"))
        .expect("the README has a Quick start section");
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(start) = rest.find("```sh\n") {
        let body = &rest[start + 6..];
        let end = body.find("```").expect("a closed block");
        blocks.push(body[..end].to_string());
        rest = &body[end + 3..];
    }
    blocks
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn the_quick_start_runs_as_written() {
    if !root_or_skip() {
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let blocks = quick_start(&readme);
    assert!(blocks.len() >= 3, "{blocks:?}");
    assert!(
        std::net::TcpListener::bind("127.0.0.1:8082").is_ok(),
        "the quick start serves on 127.0.0.1:8082, which is taken"
    );

    let dir = tmp();
    let public = LocalAddress::add("192.0.1", 9);
    let (reg, cert) = TestRegistry::start_tls(&public.ip);
    push_app(&reg, dir.path(), "app", None);
    let image = format!("{}/app:v1", reg.addr);

    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n");
    let mut replaced = 0;
    for block in &blocks {
        for line in block.lines() {
            if line.starts_with("IMAGE=") {
                script.push_str(&format!("IMAGE={image}\n"));
                replaced += 1;
            } else {
                script.push_str(line);
                script.push('\n');
            }
        }
    }
    assert_eq!(replaced, 1, "one IMAGE= line in the quick start");
    let work = dir.path().join("work");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_builderd")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("PATH", path)
        .env("HOME", &home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("BUILDERD_DATA_DIR")
        .env_remove("BUILDERD_KEY")
        .env_remove("BUILDERD_SERVER")
        .env("SSL_CERT_FILE", &cert)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "the quick start failed:\n{script}\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    assert!(
        out.contains("hello from a microVM") || err.contains("hello from a microVM"),
        "{out}\n{err}"
    );
    for image in ["rootfs.ext4", "tree.ext4", "app.ext4"] {
        e2fsck(&work.join(image));
    }
    assert!(
        out.contains("BUILD_STATE_QUEUED"),
        "curl's CreateBuild answer: {out}"
    );
}
