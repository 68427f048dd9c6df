//! Initramfs mode (`/init` in the initramfs `builderd boot` makes): load the
//! kernel modules the root disk needs, mount the root named by `root=`, make
//! the mount points an image may lack (/dev, /proc, /sys, /run: a container
//! image often has none), move /dev across, and hand over to the `init=` the
//! command line names, as PID 1.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::setup::warn;
use crate::sys::{cstr, mount};

/// The modules to load, in order, one file name per line.
const MODULE_LIST: &str = "/modules.order";
const NEW_ROOT: &str = "/newroot";
/// How long to wait for a disk to appear.
const DISK_WAIT: Duration = Duration::from_secs(10);

/// Runs the initramfs stage; only returns on failure.
pub fn run() -> String {
    finish(stage())
}

/// The error of a stage that only returns on failure.
pub fn finish(stage: Result<Never, String>) -> String {
    match stage {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

pub enum Never {}

fn stage() -> Result<Never, String> {
    let _ = std::fs::create_dir_all("/proc");
    let _ = std::fs::create_dir_all("/dev");
    mount("proc", "/proc", "proc", 0, "").map_err(|e| format!("cannot mount /proc: {e}"))?;
    mount("devtmpfs", "/dev", "devtmpfs", 0, "").map_err(|e| format!("cannot mount /dev: {e}"))?;
    load_modules()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let param = |name: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    let root = param("root").ok_or("the kernel command line names no root= device")?;
    let init = param("init").unwrap_or_else(|| "/sbin/init".into());
    let fstype = param("rootfstype").unwrap_or_else(|| "ext4".into());
    let read_only = cmdline.split_whitespace().any(|w| w == "ro");

    wait_for(&root)?;
    let _ = std::fs::create_dir_all(NEW_ROOT);
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    mount(&root, NEW_ROOT, &fstype, flags, "")
        .map_err(|e| format!("cannot mount {root} ({fstype}) on /: {e}"))?;
    let p = cstr("/proc");
    // SAFETY: umount with a live string; the new init mounts its own /proc.
    unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    enter(NEW_ROOT, &init)
}

/// Waits for the block device `dev` to appear.
pub fn wait_for(dev: &str) -> Result<(), String> {
    let started = Instant::now();
    while !Path::new(dev).exists() {
        if started.elapsed() > DISK_WAIT {
            return Err(format!(
                "the disk {dev} did not appear within {} s",
                DISK_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Makes the mount points an image may lack in the root mounted at
/// `new_root`, moves /dev there, makes it `/` and starts `init` in it.
pub fn enter(new_root: &str, init: &str) -> Result<Never, String> {
    for dir in ["dev", "proc", "sys", "run"] {
        let p = format!("{new_root}/{dir}");
        if std::fs::symlink_metadata(&p).is_err() {
            if let Err(e) = std::fs::create_dir(&p) {
                warn(&format!(
                    "cannot make the mount point /{dir} in the image: {e}"
                ));
            }
        }
    }
    mount("/dev", &format!("{new_root}/dev"), "", libc::MS_MOVE, "")
        .map_err(|e| format!("cannot move /dev into the root: {e}"))?;
    switch_root(new_root, init)
}

/// Loads each listed module; a module the kernel already has is fine.
fn load_modules() -> Result<(), String> {
    let list = std::fs::read_to_string(MODULE_LIST).unwrap_or_default();
    for name in list.lines().filter(|l| !l.is_empty()) {
        let file = std::fs::File::open(format!("/modules/{name}"))
            .map_err(|e| format!("module {name}: {e}"))?;
        // Compressed modules are the kernel's to decompress.
        let flags = if name.ends_with(".ko") {
            0
        } else {
            4 /* MODULE_INIT_COMPRESSED_FILE */
        };
        let args = cstr("");
        use std::os::fd::AsRawFd;
        // SAFETY: finit_module with an open descriptor and a live string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                args.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("cannot load the kernel module {name}: {e}"));
            }
        }
    }
    Ok(())
}

/// Makes the mounted root `/` and execs its init. The initramfs's few
/// megabytes of files stay in memory; the new root never sees them.
fn switch_root(new_root: &str, init: &str) -> Result<Never, String> {
    std::env::set_current_dir(new_root).map_err(|e| format!("cannot enter the root: {e}"))?;
    mount(".", "/", "", libc::MS_MOVE, "")
        .map_err(|e| format!("cannot move the root to /: {e}"))?;
    let dot = cstr(".");
    // SAFETY: chroot and chdir with live strings.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(format!(
            "cannot chroot into the root: {}",
            std::io::Error::last_os_error()
        ));
    }
    let _ = std::env::set_current_dir("/");
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(init).arg0(init).exec();
    Err(format!("cannot start the init {init}: {e}"))
}
