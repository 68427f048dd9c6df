//! Builds `builderd-init` as a static executable and hands its path to the
//! crate, which embeds it: a build then needs nothing else on the host.
//!
//! It is a separate cargo run (its own target dir under OUT_DIR) because the
//! init needs different code generation (`+crt-static`) from everything else,
//! and cargo cannot yet depend on a binary artifact on stable.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let init_dir = manifest_dir.join("../init");
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out.join("init-target");

    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--bin",
        "builderd-init",
        "--target",
        &target,
    ])
    .arg("--manifest-path")
    .arg(init_dir.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    // Only the init is built with these flags (--target keeps them off
    // build scripts and proc macros).
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Ctarget-feature=+crt-static\u{1f}-Cstrip=symbols\u{1f}-Cdebuginfo=0",
    )
    .env_remove("RUSTFLAGS")
    .env_remove("RUSTC_WRAPPER")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("CARGO_TARGET_DIR")
    .env_remove("CARGO_BUILD_TARGET");
    let status = cmd.status().expect("running cargo to build builderd-init");
    assert!(status.success(), "building builderd-init failed");

    let built = target_dir
        .join(&target)
        .join("release")
        .join("builderd-init");
    println!("cargo:rustc-env=BUILDERD_INIT_PATH={}", built.display());
    println!("cargo:rerun-if-changed=../init/src");
    println!("cargo:rerun-if-changed=../init/Cargo.toml");
    println!("cargo:rerun-if-changed=../../Cargo.lock");
}
