//! Marks a build made by a user other than root (`builderd_not_root`), so
//! the integration tests that need root (loop mounts, device nodes, cgroups,
//! addresses on `lo`) show as ignored there instead of passing without
//! having run. Run as root, as CI does, they run (and, with
//! BUILDERD_TESTS_NEED_ROOT set, must).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(builderd_not_root)");
    println!("cargo::rerun-if-changed=build.rs");
    // Who builds can change without a source change: look again each time
    // the user's environment says another user.
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=SUDO_USER");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("cargo::rustc-cfg=builderd_not_root");
    }
}
