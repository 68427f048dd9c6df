//! builderd-init: PID 1 of a DIRECT_EXEC microVM. It sets up the system the
//! app expects (mounts, hostname, loopback, limits, user), starts the app as
//! its child, forwards signals, reaps orphans, and powers the VM off when the
//! app exits, reporting the exit code on the console. It never exits itself:
//! PID 1 exiting is a kernel panic, so every failure ends in a power-off.
//!
//! As `/init` of the initramfs `builderd boot` makes, it mounts the root and
//! hands over to the init the kernel command line names. On the top disk of
//! an image whose layers are kept, it first mounts the layer disks as an
//! overlay and starts the image's init in it.
//!
//! `builderd-init report-exit` is the SYSTEMD strategy's helper: run by the
//! app's unit after the app stops, it writes the same exit line to the console.

mod console;
mod first_boot;
mod initramfs;
mod overlay_root;
mod setup;
mod steps;
mod supervise;
mod sys;

use builderd_init::layered::LAYERS_PATH;
use builderd_init::{exit_line, Layers, RunConfig, RUN_CONFIG_PATH};
use console::say;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("report-exit") {
        std::process::exit(supervise::report_exit());
    }
    if std::process::id() == 1 && args.first().map(String::as_str) == Some("/init") {
        // The kernel starts the initramfs's init as /init; the real root's is
        // started by the path in init=.
        let e = initramfs::run();
        say(&format!("builderd-init: error: {e}"));
        setup::power_off();
    }
    if std::process::id() == 1 {
        // On the top disk of an image whose layers are kept: the overlay
        // is the root, and the image's init starts in it.
        let e = match std::fs::read(LAYERS_PATH) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("cannot read {LAYERS_PATH}: {e}")),
            Ok(text) => Some(match serde_json::from_slice::<Layers>(&text) {
                Ok(layers) => initramfs::finish(overlay_root::run(&layers)),
                Err(e) => format!("{LAYERS_PATH} is not valid: {e}"),
            }),
        };
        if let Some(e) = e {
            say(&format!("builderd-init: error: {e}"));
            setup::power_off();
        }
    }
    if std::process::id() != 1 {
        eprintln!(
            "builderd-init: runs only as PID 1 of a microVM (or as `builderd-init report-exit`)"
        );
        std::process::exit(2);
    }
    let outcome = std::panic::catch_unwind(run).unwrap_or_else(|_| Err("init panicked".into()));
    match outcome {
        Ok(code) => {
            setup::sync_and_freeze_root();
            say(&exit_line(code));
        }
        Err(e) => {
            setup::sync_and_freeze_root();
            say(&format!("builderd-init: error: {e}"));
        }
    }
    setup::power_off();
}

/// Everything up to the app's exit code.
fn run() -> Result<i32, String> {
    setup::system()?;
    let text = std::fs::read_to_string(RUN_CONFIG_PATH)
        .map_err(|e| format!("cannot read {RUN_CONFIG_PATH}: {e}"))?;
    let config: RunConfig = serde_json::from_str(&text)
        .map_err(|e| format!("{RUN_CONFIG_PATH} is not a valid run config: {e}"))?;
    setup::hostname(config.hostname());
    if let Some(disk) = steps::requested() {
        return steps::run(&config, &disk);
    }
    first_boot::run();
    supervise::run_app(&config)
}
