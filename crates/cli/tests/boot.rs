//! Built images boot: QEMU (Debian's qemu-system-x86) with Debian's kernel,
//! through `builderd boot`, for each init strategy, with images the tests
//! make and push to a real registry on loopback. Every booted image passes
//! `e2fsck -fn` before and after its boot.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::images::{assert_failed, build, built, make_image};
use common::projects::metadata;
use common::registry::TestRegistry;
use common::*;
use serde_json::json;

/// Every boot is bounded (TCG boots take seconds; systemd's tens of them).
const BOOT_TIMEOUT: &str = "180";

const APP: &str = r#"#!/bin/sh
echo "app: uid=$(busybox id -u) gid=$(busybox id -g) groups=$(busybox id -G) home=$HOME pwd=$(busybox pwd) lower=$lower_name extra=$extra host=$(busybox hostname)"
# An orphan: the subshell exits at once, so its sleep is re-parented to PID 1,
# which must reap it when it exits a second later.
( busybox sleep 1 & )
busybox sleep 3
z=0
for s in /proc/[0-9]*/stat; do
  case "$(busybox cat "$s" 2>/dev/null)" in *") Z "*) z=$((z + 1));; esac
done
echo "app: zombies=$z"
exit 7
"#;

/// A busybox userland with a non-root user and an app; no /dev, /proc,
/// /sys, /run or /tmp: the boot makes them.
fn busybox_image(layout: &Path) {
    make_image(
        layout,
        json!({"tag": "v1", "layers": [{"entries": [
            {"name": "bin", "type": "dir"},
            {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
            {"name": "bin/sh", "type": "symlink", "link": "busybox"},
            {"name": "etc", "type": "dir"},
            {"name": "etc/passwd", "data": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"},
            {"name": "etc/group", "data": "root:x:0:\napp:x:1000:\nvideo:x:44:app\n"},
            {"name": "srv", "type": "dir"},
            {"name": "app.sh", "data": APP, "mode": 0o755},
        ]}], "config": {
            "Entrypoint": ["/app.sh"],
            "Env": ["PATH=/bin", "lower_name=yes"],
            "User": "app",
            "WorkingDir": "/srv",
        }}),
    );
}

/// Pushes the busybox image; answers its reference.
fn pushed_busybox(dir: &Path, registry: &TestRegistry) -> String {
    let layout = dir.join("layout");
    busybox_image(&layout);
    registry.push(&layout, "v1", "boot/busybox:v1", None);
    format!("docker://{}/boot/busybox:v1", registry.addr)
}

/// The busybox image as an OCI layout; answers its source.
fn local_busybox(dir: &Path) -> String {
    let layout = dir.join("layout");
    busybox_image(&layout);
    format!("oci:{}:v1", layout.display())
}

fn boot(image: &Path, timeout: &str) -> Output {
    let o = builderd()
        .args(["boot", "--timeout", timeout])
        .arg(image)
        .output()
        .unwrap();
    eprintln!(
        "--- console of {}:\n{}\n--- stderr:\n{}",
        image.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The console line with `marker`, from the marker on (systemd's console
/// output puts a time and the unit's process before it).
fn console_line(o: &Output, marker: &str) -> String {
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no console line with {marker:?}"));
    line[line.find(marker).unwrap()..].trim_end().to_string()
}

#[test]
fn direct_exec_runs_the_entrypoint_as_the_image_says_and_returns_its_code() {
    let dir = tmp();
    let registry = TestRegistry::start(None);
    let source = pushed_busybox(dir.path(), &registry);
    let image = dir.path().join("app.ext4");
    built(&source, &image, &["--env", "extra=from-build"]);

    let meta = metadata(&image);
    assert_eq!(meta["init_strategy"], "INIT_STRATEGY_DIRECT_EXEC");
    assert_eq!(
        meta["kernel_cmdline"],
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/.builderd/init"
    );
    assert_eq!(meta["run_config"]["user"], "app");

    let o = boot(&image, BOOT_TIMEOUT);
    assert_eq!(o.status.code(), Some(7), "the app's exit code");
    assert_eq!(
        console_line(&o, "app: uid="),
        "app: uid=1000 gid=1000 groups=1000 44 home=/home/app pwd=/srv lower=yes extra=from-build host=builderd"
    );
    assert_eq!(
        console_line(&o, "app: zombies="),
        "app: zombies=0",
        "the orphan was reaped"
    );
    assert_eq!(
        console_line(&o, "builderd-init: app exited"),
        "builderd-init: app exited with code 7"
    );
    e2fsck(&image);
}

#[test]
fn direct_exec_delivers_sigterm_to_the_app_on_shutdown() {
    let dir = tmp();
    let registry = TestRegistry::start(None);
    let source = pushed_busybox(dir.path(), &registry);
    let image = dir.path().join("term.ext4");
    let script = r#"trap 'echo "app: got SIGTERM as $(busybox id -un)"; exit 3' TERM
echo "app: ready"
while :; do busybox sleep 0.1; done"#;
    let entrypoint = serde_json::to_string(&["/bin/sh", "-c", script]).unwrap();
    built(&source, &image, &["--entrypoint", &entrypoint]);

    let mut child = builderd()
        .args(["boot", "--timeout", BOOT_TIMEOUT])
        .arg(&image)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut console = Vec::new();
    let started = Instant::now();
    for line in lines.by_ref() {
        let line = line.unwrap();
        console.push(line.clone());
        if line.starts_with("app: ready") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no ready line: {console:?}"
        );
    }
    // As an operator stops it: SIGTERM to `builderd boot`, which presses
    // Ctrl-Alt-Del; the guest's init turns that into SIGTERM for the app.
    // SAFETY: kill with our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    console.extend(lines.map(Result::unwrap));
    let status = child.wait().unwrap();
    eprintln!("{}", console.join("\n"));
    assert!(
        console
            .iter()
            .any(|l| l.trim_end() == "app: got SIGTERM as app"),
        "{console:?}"
    );
    assert_eq!(status.code(), Some(3));
    e2fsck(&image);
}

#[test]
fn init_failures_are_a_console_message_and_a_power_off() {
    let dir = tmp();
    let source = local_busybox(dir.path());
    let image = dir.path().join("missing.ext4");
    built(&source, &image, &["--entrypoint", "/no/such/app"]);
    let o = boot(&image, BOOT_TIMEOUT);
    let console = String::from_utf8_lossy(&o.stdout);
    assert!(
        console.contains(
            "builderd-init: error: cannot start \"/no/such/app\": No such file or directory"
        ),
        "{console}"
    );
    assert!(!console.contains("Kernel panic"), "{console}");
    assert!(console.contains("reboot: Power down"), "{console}");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("without the app's exit line"));
    e2fsck(&image);
}

#[test]
fn custom_strategy_boots_the_users_script() {
    let dir = tmp();
    let registry = TestRegistry::start(None);
    let source = pushed_busybox(dir.path(), &registry);
    let script = dir.path().join("init.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
busybox mount -t proc proc /proc
echo "custom: pid=$$ comm=$(busybox cat /proc/1/comm)"
echo "builderd-init: app exited with code $((40 + 2))"
busybox sync
busybox mount -o remount,ro /
busybox poweroff -f
"#,
    )
    .unwrap();
    let image = dir.path().join("custom.ext4");
    built(
        &source,
        &image,
        &[
            "--init",
            "custom",
            "--init-script",
            script.to_str().unwrap(),
        ],
    );
    let meta = metadata(&image);
    assert_eq!(meta["init_strategy"], "INIT_STRATEGY_CUSTOM");
    assert!(meta["kernel_cmdline"]
        .as_str()
        .unwrap()
        .ends_with(" init=/.builderd/init-custom"));

    let o = boot(&image, BOOT_TIMEOUT);
    assert_eq!(
        console_line(&o, "custom: "),
        "custom: pid=1 comm=init-custom"
    );
    assert_eq!(o.status.code(), Some(42));
    e2fsck(&image);
}

/// A Debian bookworm tree with systemd, from debootstrap, packed as a layer
/// tar; kept between runs on one machine (it takes minutes to make).
fn debian_systemd_tar() -> PathBuf {
    let cache = Path::new("/var/cache/builderd-tests");
    let tar = cache.join("bookworm-systemd.tar");
    if tar.exists() {
        return tar;
    }
    std::fs::create_dir_all(cache.join("debootstrap")).unwrap();
    let tree = tempfile::Builder::new()
        .prefix("builderd-debootstrap-")
        .tempdir_in(cache)
        .unwrap();
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=systemd,systemd-sysv"])
        .arg(format!(
            "--cache-dir={}",
            cache.join("debootstrap").display()
        ))
        .arg("bookworm")
        .arg(tree.path())
        .arg("http://deb.debian.org/debian"));
    let partial = cache.join("bookworm-systemd.tar.partial");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(tree.path())
        .arg("-cf")
        .arg(&partial)
        .arg("."));
    std::fs::rename(&partial, &tar).unwrap();
    tar
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn systemd_strategy_boots_debian_to_the_apps_unit() {
    if !root_or_skip() {
        return; // debootstrap needs root
    }
    let dir = tmp();
    let tar = debian_systemd_tar();
    let layout = dir.path().join("layout");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"compression": "zstd", "tar": tar.to_str().unwrap()}],
        "config": {
            "Cmd": ["/bin/sh", "-c", "echo \"app: pid1=$(cat /proc/1/comm) user=$(id -un) pwd=$(pwd) lower=$lower_name\"; exit 5"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "lower_name=yes"],
            "User": "nobody",
            "WorkingDir": "/tmp",
        }}),
    );
    let registry = TestRegistry::start(None);
    registry.push(&layout, "v1", "boot/debian:v1", None);
    let source = format!("docker://{}/boot/debian:v1", registry.addr);
    let image = dir.path().join("debian.ext4");
    built(&source, &image, &["--init", "systemd", "--free", "64M"]);
    let meta = metadata(&image);
    assert_eq!(meta["init_strategy"], "INIT_STRATEGY_SYSTEMD");
    assert!(meta["kernel_cmdline"]
        .as_str()
        .unwrap()
        .ends_with(" init=/lib/systemd/systemd"));

    let o = boot(&image, "300");
    assert_eq!(
        console_line(&o, "app: pid1="),
        "app: pid1=systemd user=nobody pwd=/tmp lower=yes"
    );
    assert_eq!(o.status.code(), Some(5));
    e2fsck(&image);
}

#[test]
fn boot_options_are_checked_and_written() {
    let dir = tmp();
    let source = local_busybox(dir.path());

    // Compressed copies decompress to the image, with their own checksums.
    let image = dir.path().join("c.ext4");
    built(&source, &image, &["--compression", "zstd"]);
    let meta = metadata(&image);
    let zst = PathBuf::from(format!("{}.zst", image.display()));
    assert_eq!(meta["compressed"]["format"], "zstd");
    assert_eq!(meta["compressed"]["file"], zst.to_str().unwrap());
    assert_eq!(meta["compressed"]["sha256"], sha256_of(&zst));
    assert_eq!(
        meta["compressed"]["size_bytes"],
        std::fs::metadata(&zst).unwrap().len()
    );
    let unpacked = run(Command::new("zstd").args(["-dc"]).arg(&zst)).stdout;
    assert_eq!(unpacked, std::fs::read(&image).unwrap());
    let gz_image = dir.path().join("g.ext4");
    built(&source, &gz_image, &["--compression", "gzip"]);
    let gz = PathBuf::from(format!("{}.gz", gz_image.display()));
    assert_eq!(metadata(&gz_image)["compressed"]["sha256"], sha256_of(&gz));
    let unpacked = run(Command::new("gzip").args(["-dc"]).arg(&gz)).stdout;
    assert_eq!(unpacked, std::fs::read(&gz_image).unwrap());

    // Each refusal is clear and leaves nothing behind.
    let out = dir.path().join("refused.ext4");
    let err = assert_failed(&build(&source, &out, &["--size-limit", "1M"]), &out);
    assert!(
        err.contains("over the size limit of 1048576 bytes"),
        "{err}"
    );
    let err = assert_failed(&build(&source, &out, &["--init", "systemd"]), &out);
    assert!(err.contains("needs systemd in the image"), "{err}");
    let err = assert_failed(&build(&source, &out, &["--init", "custom"]), &out);
    assert!(err.contains("--init-script"), "{err}");
    let script = dir.path().join("bad.sh");
    std::fs::write(&script, "#!/usr/bin/python3\nprint('hi')\n").unwrap();
    let err = assert_failed(
        &build(
            &source,
            &out,
            &[
                "--init",
                "custom",
                "--init-script",
                script.to_str().unwrap(),
            ],
        ),
        &out,
    );
    assert!(
        err.contains("\"/usr/bin/python3\" is not in the image"),
        "{err}"
    );
    let err = assert_failed(&build(&source, &out, &["--env", "NOVALUE"]), &out);
    assert!(err.contains("NAME=value"), "{err}");
    assert!(!Path::new(&format!("{}.zst", out.display())).exists());
}

fn sha256_of(path: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
