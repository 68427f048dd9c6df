//! `builderd build SOURCE --run CMD`: build steps in the image, run by
//! buildah and runc, on images the tests make (busybox). Each image is
//! e2fsck-checked; isolation is asserted from inside a step (what it prints)
//! and from the host (what it could not touch). Needs root, buildah, runc.

mod common;

use std::path::Path;
use std::process::Output;

use common::images::{assert_failed, build, make_image};
use common::projects::{debugfs_cat, metadata};
use common::registry::TestHost;
use common::*;
use serde_json::{json, Value};

/// Bytes planted in a file the first step removes: they must not be found
/// anywhere in the image file afterwards.
const PLANTED: &str = "PLANTED-6c1f0e-not-to-be-found";

/// A busybox userland with a cache directory to remove; answers its source.
fn busybox(dir: &Path) -> String {
    busybox_with(dir, Vec::new())
}

/// `busybox` with more entries.
fn busybox_with(dir: &Path, extra: Vec<Value>) -> String {
    let layout = dir.join("layout");
    let mut entries = vec![
        json!({"name": "bin", "type": "dir"}),
        json!({"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755}),
        json!({"name": "bin/sh", "type": "symlink", "link": "busybox"}),
        json!({"name": "etc", "type": "dir"}),
        json!({"name": "etc/passwd", "data": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"}),
        json!({"name": "etc/group", "data": "root:x:0:\napp:x:1000:\n"}),
        json!({"name": "var/cache/x", "type": "dir"}),
        json!({"name": "var/cache/x/blob", "data": PLANTED.repeat(200)}),
    ];
    entries.extend(extra);
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"compression": "gzip", "entries": entries}],
               "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}}),
    );
    // busybox's applets, as a shell in the image would find them.
    format!("oci:{}:v1", layout.display())
}

/// `builderd build SOURCE -o OUT --steps-dir DIR/steps EXTRA...`.
fn build_steps(dir: &Path, source: &str, out: &Path, extra: &[&str]) -> Output {
    let steps = dir.join("steps");
    let mut args = vec!["--steps-dir", steps.to_str().unwrap()];
    args.extend_from_slice(extra);
    build(source, out, &args)
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "the build failed:\n{err}");
    err
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_step_changes_the_image_and_what_it_removes_is_gone_to_the_byte() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let source = busybox(dir.path());
    let out = dir.path().join("a.ext4");
    let err = ok(&build_steps(
        dir.path(),
        &source,
        &out,
        &[
            "--run",
            "rm -rf /var/cache/x && echo built > /etc/marker",
            "--run",
            "echo second step sees $(cat /etc/marker)",
        ],
    ));
    assert!(err.contains("second step sees built"), "{err}");
    e2fsck(&out);
    assert_eq!(debugfs_cat(&out, "/etc/marker"), "built\n");
    assert_eq!(debugfs_cat(&out, "/var/cache/x/blob"), "");
    let image = std::fs::read(&out).unwrap();
    assert!(
        !image
            .windows(PLANTED.len())
            .any(|w| w == PLANTED.as_bytes()),
        "the removed file's bytes are still in the image"
    );
    let meta = metadata(&out);
    let steps = &meta["steps"];
    assert_eq!(steps["sandbox"], "oci");
    assert_eq!(steps["commands"].as_array().unwrap().len(), 2);
    assert_eq!(steps["commands"][0]["exit_code"], 0);

    // Deterministic commands, the same input: the same image.
    let again = dir.path().join("b.ext4");
    ok(&build_steps(
        dir.path(),
        &source,
        &again,
        &[
            "--run",
            "rm -rf /var/cache/x && echo built > /etc/marker",
            "--run",
            "echo second step sees $(cat /etc/marker)",
        ],
    ));
    assert_eq!(
        metadata(&again)["image"]["sha256"],
        meta["image"]["sha256"],
        "two builds of the same steps differ"
    );
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_failing_step_ends_the_build_with_its_command_code_and_output() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let source = busybox(dir.path());
    let out = dir.path().join("a.ext4");
    let o = build_steps(
        dir.path(),
        &source,
        &out,
        &[
            "--run",
            "true",
            "--run",
            "echo about to fail; exit 3",
            "--run",
            "echo never runs",
        ],
    );
    let err = assert_failed(&o, &out);
    assert!(
        err.contains("build step 2 failed with exit code 3: echo about to fail; exit 3"),
        "{err}"
    );
    assert!(err.contains("last output:\nabout to fail"), "{err}");
    assert!(!err.contains("never runs\n"), "{err}");
}

/// A test host with an HTTP server on two addresses: its own private one
/// and a public one (198.51.100.10, TEST-NET-2, routed to it from here).
struct TestNet {
    host: TestHost,
    server: std::process::Child,
}

const PUBLIC_SERVER: &str = "198.51.100.10";
const SERVER_PORT: u16 = 18080;

impl TestNet {
    fn new(dir: &Path) -> TestNet {
        let host = TestHost::create();
        host.add_address(PUBLIC_SERVER);
        let served = dir.join("served");
        std::fs::create_dir_all(&served).unwrap();
        std::fs::write(served.join("marker"), "SERVED-BY-THE-TEST-HOST\n").unwrap();
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &host.name, "python3", "-m", "http.server"])
            .arg(SERVER_PORT.to_string())
            .arg("--directory")
            .arg(&served)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let net = TestNet { host, server };
        // Serving once it answers from here.
        for _ in 0..100 {
            let url = format!("http://{}:{SERVER_PORT}/marker", net.host.ip);
            if std::process::Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &url])
                .status()
                .unwrap()
                .success()
            {
                return net;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the test host's server did not start");
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The host's address on its default route.
fn host_address() -> String {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("198.51.100.1:9").unwrap();
    s.local_addr().unwrap().ip().to_string()
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_step_is_root_only_in_its_namespace_and_reaches_nothing_of_the_host() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    // A device node in the image: the host's /dev/null, were it usable.
    let source = busybox_with(
        dir.path(),
        vec![json!({"name": "hostnull", "type": "char", "major": 1, "minor": 3, "mode": 0o666})],
    );
    let net = TestNet::new(dir.path());
    // A file and servers of the host's, which the step tries to reach: on
    // loopback, and on every address (reached through the host's own
    // addresses: its default route's and the step's gateway).
    let secret = dir.path().join("host-secret");
    std::fs::write(&secret, "host-only-content").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    any.set_nonblocking(true).unwrap();
    let any_port = any.local_addr().unwrap().port();
    let get = |addr: &str, port: u16, name: &str| {
        format!(
            "printf 'GET /marker HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} {port} | grep -q SERVED \
             && echo {name}-REACHED || echo {name}-UNREACHABLE; "
        )
    };
    let connect = |addr: &str, port: u16, name: &str| {
        format!(
            "echo x | nc -w 2 {addr} {port} && echo {name}-REACHED || echo {name}-UNREACHABLE; "
        )
    };
    let script = format!(
        "id -u; cat /proc/self/uid_map; \
         cat {secret} 2>&1 || echo SECRET-UNREADABLE; \
         {loopback}{public}{private}{host}\
         gw=$(ip route | awk '/^default/ {{print $3}}'); \
         if [ -n \"$gw\" ]; then {gateway} else echo GATEWAY-UNREACHABLE; fi; \
         mount -t tmpfs none /mnt 2>&1 && echo MOUNT-OK || echo MOUNT-REFUSED; \
         unshare -U -r true 2>&1 && echo UNSHARE-OK || echo UNSHARE-REFUSED; \
         (echo b > /proc/sysrq-trigger) 2>&1 && echo SYSRQ-OK || echo SYSRQ-REFUSED; \
         ip link set eth0 down 2>&1 && echo NETADMIN-OK || echo NETADMIN-REFUSED; \
         (echo x > /hostnull) 2>&1 && echo DEVICE-OK || echo DEVICE-REFUSED; \
         touch /made-by-step",
        secret = secret.display(),
        loopback = connect("127.0.0.1", port, "LOOPBACK"),
        public = get(PUBLIC_SERVER, SERVER_PORT, "PUBLIC"),
        private = get(&net.host.ip, SERVER_PORT, "PRIVATE"),
        host = connect(&host_address(), any_port, "HOST"),
        gateway = connect("$gw", any_port, "GATEWAY"),
    );
    for network in ["none", "egress"] {
        let out = dir.path().join(format!("{network}.ext4"));
        let err = ok(&build_steps(
            dir.path(),
            &source,
            &out,
            &["--network", network, "--run", &script],
        ));
        // Root in the image, uid 100000 on the host.
        let map: Vec<&str> = err
            .lines()
            .find(|l| l.split_whitespace().count() == 3 && l.trim_start().starts_with('0'))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(map, ["0", "100000", "65536"], "{err}");
        assert!(err.lines().any(|l| l == "0"), "not root inside:\n{err}");
        // Only egress reaches the public server; nothing reaches the rest.
        let public = if network == "egress" {
            "PUBLIC-REACHED"
        } else {
            "PUBLIC-UNREACHABLE"
        };
        for expected in [
            "SECRET-UNREADABLE",
            "LOOPBACK-UNREACHABLE",
            public,
            "PRIVATE-UNREACHABLE",
            "HOST-UNREACHABLE",
            "GATEWAY-UNREACHABLE",
            "MOUNT-REFUSED",
            "UNSHARE-REFUSED",
            "SYSRQ-REFUSED",
            "NETADMIN-REFUSED",
            "DEVICE-REFUSED",
        ] {
            // A line of its own (the command, echoed, holds every word).
            assert!(
                err.lines().any(|l| l == expected),
                "{network}: {expected} not seen:\n{err}"
            );
        }
        assert!(!err.contains("host-only-content"), "{err}");
        for (name, l) in [("loopback", &listener), ("any-address", &any)] {
            assert!(
                matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "{network}: the host's {name} server was reached"
            );
        }
        assert_eq!(metadata(&out)["steps"]["network"], network);
        // The file the step made is the image's root's, not uid 100000's.
        e2fsck(&out);
        let stat = std::process::Command::new("debugfs")
            .args(["-R", "stat /made-by-step"])
            .arg(&out)
            .output()
            .unwrap();
        let stat = String::from_utf8_lossy(&stat.stdout);
        assert!(stat.contains("User:     0"), "{stat}");
    }
    drop(net);
}

/// A build of the busybox image with `extra` that must fail, its events as
/// JSON: answers its error's category and message, and how long it took.
fn failed_steps(extra: &[&str]) -> (String, String, std::time::Duration) {
    let dir = tmp();
    let source = busybox(dir.path());
    let out = dir.path().join("a.ext4");
    let started = std::time::Instant::now();
    let mut args = vec!["--events", "json"];
    args.extend_from_slice(extra);
    let o = build_steps(dir.path(), &source, &out, &args);
    let took = started.elapsed();
    assert_failed(&o, &out);
    // The events end with the build's error.
    let error = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|e| e.get("error").cloned())
        .unwrap_or_default();
    let text = |k: &str| error[k].as_str().unwrap_or_default().to_string();
    (text("category"), text("message"), took)
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_fork_bomb_ends_as_a_resource_failure_and_the_host_goes_on() {
    if !root_or_skip() {
        return;
    }
    let (category, message, took) = failed_steps(&[
        "--pids",
        "64",
        "--steps-timeout",
        "5m",
        "--run",
        "while true; do sleep 60 & done",
    ]);
    assert_eq!(category, "resource", "{message}");
    assert!(message.contains("limit of 64 processes"), "{message}");
    assert!(
        took < std::time::Duration::from_secs(120),
        "the bomb ran {took:?}"
    );
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_step_over_its_memory_ends_as_a_resource_failure() {
    if !root_or_skip() {
        return;
    }
    let (category, message, _) = failed_steps(&[
        "--memory",
        "256M",
        "--run",
        // A shell variable of 1 GiB.
        "x=$(head -c 1073741824 /dev/zero | tr '\\0' a); echo ${#x}",
    ]);
    assert_eq!(category, "resource", "{message}");
    assert!(message.contains("ran out of memory"), "{message}");
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_step_past_its_time_ends_as_a_timeout() {
    if !root_or_skip() {
        return;
    }
    let (category, message, took) = failed_steps(&["--steps-timeout", "3s", "--run", "sleep 600"]);
    assert_eq!(category, "timeout", "{message}");
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_cache_mount_is_kept_for_the_next_build_of_its_storage_and_no_other() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let source = busybox(dir.path());
    // Two step storages, as the service gives two tenants.
    let build_in = |storage: &str, n: u32| {
        let out = dir.path().join(format!("{storage}-{n}.ext4"));
        let steps = dir.path().join(storage);
        let err = ok(&build(
            &source,
            &out,
            &[
                "--steps-dir",
                steps.to_str().unwrap(),
                "--cache-mount",
                "/root/.cache",
                "--run",
                "ls /root/.cache; echo \"$(cat /root/.cache/seen 2>/dev/null) build\" > /root/.cache/seen; \
                 echo CACHE-NOW: $(cat /root/.cache/seen)",
            ],
        ));
        e2fsck(&out);
        // The cache is not in the image.
        assert_eq!(debugfs_cat(&out, "/root/.cache/seen"), "");
        err.lines()
            .find_map(|l| l.strip_prefix("CACHE-NOW: "))
            .unwrap_or_else(|| panic!("no CACHE-NOW line:\n{err}"))
            .to_string()
    };
    assert_eq!(build_in("tenant-a", 1), "build");
    assert_eq!(
        build_in("tenant-a", 2),
        "build build",
        "tenant A's cache kept"
    );
    assert_eq!(
        build_in("tenant-b", 1),
        "build",
        "tenant B saw tenant A's cache"
    );
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn the_step_storage_keeps_only_the_most_recently_used_bases() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let storage = dir.path().join("steps");
    let disks = || std::fs::read_dir(storage.join("bases")).unwrap().count();
    // Six bases, each another image (a file of its own).
    for n in 0..6 {
        let layout = dir.path().join(format!("layout-{n}"));
        make_image(
            &layout,
            json!({"tag": "v1", "layers": [{"entries": [
                {"name": "bin", "type": "dir"},
                {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
                {"name": "bin/sh", "type": "symlink", "link": "busybox"},
                {"name": "base", "data": format!("base {n}\n")},
            ]}], "config": {"Env": ["PATH=/bin"]}}),
        );
        let out = dir.path().join(format!("{n}.ext4"));
        ok(&build_steps(
            dir.path(),
            &format!("oci:{}:v1", layout.display()),
            &out,
            &["--run", "cat /base > /seen"],
        ));
        assert_eq!(debugfs_cat(&out, "/seen"), format!("base {n}\n"));
        assert_eq!(disks(), (n + 1).min(4), "after base {n}");
    }
    // A base the storage keeps is used as it is, not written again.
    let kept = || {
        let mut v: Vec<(std::ffi::OsString, u64)> = std::fs::read_dir(storage.join("bases"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name(),
                    std::os::unix::fs::MetadataExt::ino(&e.metadata().unwrap()),
                )
            })
            .collect();
        v.sort();
        v
    };
    // Tenants' images: only root may read them.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&storage.join("bases")), 0o700);
    for e in std::fs::read_dir(storage.join("bases")).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
    let before = kept();
    ok(&build_steps(
        dir.path(),
        &format!("oci:{}:v1", dir.path().join("layout-5").display()),
        &dir.path().join("again.ext4"),
        &["--run", "cat /base > /seen"],
    ));
    assert_eq!(kept(), before);
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_base_disk_is_kept_only_once_its_blobs_are_checked() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let layout = dir.path().join("layout");
    let digests = make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"compression": "none", "entries": [
            {"name": "bin", "type": "dir"},
            {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
            {"name": "bin/sh", "type": "symlink", "link": "busybox"},
            {"name": "base", "data": "genuine\n"},
        ]}], "config": {"Env": ["PATH=/bin"]}}),
    );
    let source = format!("oci:{}:v1", layout.display());
    let disks = || {
        std::fs::read_dir(dir.path().join("steps/bases"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // The layer's blob, changed where the file's bytes are: still a tar of
    // the same size, no longer what its digest says.
    let blob = layout
        .join("blobs/sha256")
        .join(digests[0].trim_start_matches("sha256:"));
    let genuine = std::fs::read(&blob).unwrap();
    let at = genuine.windows(8).position(|w| w == b"genuine\n").unwrap();
    let mut forged = genuine.clone();
    forged[at..at + 8].copy_from_slice(b"forged!\n");
    std::fs::write(&blob, &forged).unwrap();
    let out = dir.path().join("forged.ext4");
    let o = build_steps(dir.path(), &source, &out, &["--run", "cat /base > /seen"]);
    assert!(!o.status.success(), "a forged blob was built");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("digest"), "{err}");
    assert!(!out.exists());
    assert_eq!(disks(), 0, "the disk of a forged blob was kept");
    // The genuine blob: built, and its disk kept.
    std::fs::write(&blob, &genuine).unwrap();
    ok(&build_steps(
        dir.path(),
        &source,
        &out,
        &["--run", "cat /base > /seen"],
    ));
    assert_eq!(debugfs_cat(&out, "/seen"), "genuine\n");
    assert_eq!(disks(), 1);
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn in_the_microvm_sandbox_steps_run_in_the_booted_image_and_their_tree_is_the_image() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    // Hard links and an extended attribute, to come back through the
    // guest's tree as they were.
    let source = busybox_with(
        dir.path(),
        vec![
            json!({"name": "data", "type": "dir"}),
            json!({"name": "data/a", "data": "linked\n", "xattrs": {"user.builderd": "kept"}}),
            json!({"name": "data/b", "type": "hardlink", "link": "data/a"}),
        ],
    );
    let out = dir.path().join("vm.ext4");
    // Under TCG here: a short step or two.
    let err = ok(&build_steps(
        dir.path(),
        &source,
        &out,
        &[
            "--sandbox",
            "microvm",
            "--run",
            "rm -rf /var/cache/x && echo built > /etc/marker",
            "--run",
            "echo in the vm: $(cat /etc/marker) as $(id -u)",
        ],
    ));
    assert!(
        err.lines().any(|l| l.ends_with("in the vm: built as 0")),
        "{err}"
    );
    e2fsck(&out);
    assert_eq!(debugfs_cat(&out, "/etc/marker"), "built\n");
    assert_eq!(debugfs_cat(&out, "/var/cache/x/blob"), "");
    let image = std::fs::read(&out).unwrap();
    assert!(
        !image
            .windows(PLANTED.len())
            .any(|w| w == PLANTED.as_bytes()),
        "the removed file's bytes are still in the image"
    );
    // The image's own files came through the guest's tree as they were.
    assert_eq!(debugfs_cat(&out, "/etc/group"), "root:x:0:\napp:x:1000:\n");
    let stat = |path: &str| {
        let o = std::process::Command::new("debugfs")
            .args(["-R", &format!("stat {path}")])
            .arg(&out)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (a, b) = (stat("/data/a"), stat("/data/b"));
    let inode = |s: &str| s.split_whitespace().nth(1).map(str::to_string);
    assert_eq!(inode(&a), inode(&b), "not one file:\n{a}\n{b}");
    assert!(a.contains("Links: 2"), "{a}");
    assert!(a.contains("user.builderd (4) = \"kept\""), "{a}");
    let steps = &metadata(&out)["steps"];
    assert_eq!(steps["sandbox"], "microvm");
    let codes: Vec<i64> = steps["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["exit_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [0, 0]);

    // A failing step: its exit code, from the guest, and no image.
    let failed = dir.path().join("failed.ext4");
    let o = build_steps(
        dir.path(),
        &source,
        &failed,
        &[
            "--sandbox",
            "microvm",
            "--run",
            "echo about to fail; exit 3",
        ],
    );
    let err = assert_failed(&o, &failed);
    assert!(
        err.contains("build step 1 failed with exit code 3: echo about to fail; exit 3"),
        "{err}"
    );
    assert!(err.contains("about to fail"), "{err}");
}
