//! The system an app expects, made at boot: pseudo filesystems, console,
//! hostname, loopback, limits; and the end: sync, read-only root, power-off.

use std::path::Path;

use crate::sys::{cstr, mount};

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// In order: each needs the ones before it.
const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=0755",
    },
    Mount {
        source: "tmp",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=1777",
    },
];

/// Mounts what is not mounted yet (an initramfs hands over /dev, /proc,
/// /sys and /run), makes missing mount points, gives the init a console if
/// the kernel could not, and sets limits. Ctrl-Alt-Del becomes a SIGINT to
/// this process (a shutdown request) instead of an instant reboot.
pub fn system() -> Result<(), String> {
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF);
        libc::umask(0o022);
    }
    for m in MOUNTS {
        if mounted(m.target) {
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(m.target) {
            warn(&format!("cannot make the mount point {}: {e}", m.target));
            continue;
        }
        if let Err(e) = mount(m.source, m.target, m.fstype, m.flags, m.data) {
            if m.target == "/proc" {
                return Err(format!("cannot mount /proc: {e}"));
            }
            warn(&format!("cannot mount {} on {}: {e}", m.fstype, m.target));
        }
        if m.target == "/dev" {
            console();
        }
    }
    dev_links();
    loopback_up();
    limits();
    Ok(())
}

/// Whether something is mounted at `target`, by /proc/self/mountinfo.
fn mounted(target: &str) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false; // /proc itself is not mounted yet
    };
    info.lines().any(|l| l.split(' ').nth(4) == Some(target))
}

/// When the kernel found no /dev/console to give the init (an image without
/// /dev, booted with no initramfs), fds 0 to 2 are closed or on /dev/null
/// (Rust's runtime opens it for closed standard fds); take the console now
/// that devtmpfs has it.
fn console() {
    // SAFETY: fcntl on fd numbers is harmless whether or not they are open.
    let ok = unsafe { libc::fcntl(1, libc::F_GETFD) } >= 0
        && Path::new("/proc/self/fd/1")
            .read_link()
            .is_ok_and(|p| p != Path::new("/dev/null"));
    if ok {
        return;
    }
    let path = cstr("/dev/console");
    // SAFETY: open and dup2 with a live path; the descriptor is ours.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd >= 0 {
            for n in 0..3 {
                libc::dup2(fd, n);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

/// The /dev symlinks container runtimes make and devtmpfs lacks.
fn dev_links() {
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
}

pub fn hostname(name: &str) {
    // SAFETY: the pointer and length describe `name`'s bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        warn(&format!("cannot set the hostname to {name:?}: {}", errno()));
    }
}

/// `lo` up; the kernel gives it 127.0.0.1 and ::1 itself.
fn loopback_up() {
    // SAFETY: an ifreq zeroed and filled with a valid name, on a socket we
    // own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            warn(&format!("cannot open a socket to bring up lo: {}", errno()));
            return;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                warn(&format!("cannot bring up lo: {}", errno()));
            }
        } else {
            warn(&format!("no loopback interface: {}", errno()));
        }
        libc::close(fd);
    }
}

/// Open files as docker gives containers; the rest stay the kernel's.
fn limits() {
    let want = libc::rlimit {
        rlim_cur: 1 << 20,
        rlim_max: 1 << 20,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        warn(&format!("cannot raise the open-file limit: {}", errno()));
    }
}

/// Flushes everything and makes the root read-only, so the image is clean
/// (journal checkpointed) when the VM stops.
pub fn sync_and_freeze_root() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if let Err(e) = mount("", "/", "", libc::MS_REMOUNT | libc::MS_RDONLY, "") {
        warn(&format!("cannot remount / read-only: {e}"));
    }
    // SAFETY: as above.
    unsafe { libc::sync() };
}

pub fn power_off() -> ! {
    loop {
        // SAFETY: reboot with a valid command; it only returns on failure.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
        warn(&format!("power-off failed: {}", errno()));
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

pub fn warn(msg: &str) {
    eprintln!("builderd-init: warning: {msg}");
}
