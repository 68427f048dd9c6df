//! The docker strategy's image options, on images the tests write (and,
//! as root, a Debian image from debootstrap): hardening (on by default),
//! `--optimize` and `--remove-dev-packages`. Every image passes `e2fsck
//! -fn`; files are read back with debugfs (or a loop mount), and the
//! hardened images boot.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::images::{assert_failed, build, built, make_image};
use common::projects::debugfs_cat;
use common::*;
use serde_json::{json, Value};

/// `debugfs -R "stat PATH"` of the image ("" when absent).
fn stat(image: &Path, path: &str) -> String {
    let o = std::process::Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mode(image: &Path, path: &str) -> String {
    let s = stat(image, path);
    let at = s
        .find("Mode:")
        .unwrap_or_else(|| panic!("{path} is not in the image"));
    s[at + 5..].split_whitespace().next().unwrap().to_string()
}

/// Each rule of the report that did something: its paths (sorted) and
/// entries and bytes.
fn rules(meta: &Value) -> BTreeMap<String, (Vec<String>, u64, u64)> {
    meta["policy"]["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("no policy report: {meta}"))
        .iter()
        .map(|r| {
            let mut paths: Vec<String> = r["paths"]
                .as_array()
                .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            paths.sort();
            (
                r["rule"].as_str().unwrap().to_string(),
                (
                    paths,
                    r["entries"].as_u64().unwrap(),
                    r["bytes"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Boots `image` (a copy-on-write snapshot of it) once; answers the
/// console and its exit code, with the text after `marker` on the first
/// console line that has it.
fn boot_for(image: &Path, timeout: &str, marker: &str) -> (String, Option<i32>, String) {
    let o = builderd()
        .args(["boot", "--snapshot", "--timeout", timeout])
        .arg(image)
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = console
        .lines()
        .find_map(|l| {
            l.find(marker)
                .map(|at| l[at + marker.len()..].trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {marker:?} line:\n{console}"));
    (console, o.status.code(), line)
}

fn paths(rules: &BTreeMap<String, (Vec<String>, u64, u64)>, rule: &str) -> Vec<String> {
    rules.get(rule).map(|r| r.0.clone()).unwrap_or_default()
}

const APP: &str = "#!/bin/sh\necho \"app: id=$(busybox cat /etc/machine-id)\"\n";

/// An image with what hardening is for: SSH host keys, a machine-id, a
/// history, registry and git credentials, world-writable entries and a
/// setuid binary; a second layer replaces one of them.
fn identities_image(layout: &Path) {
    make_image(
        layout,
        json!({"tag": "v1", "layers": [{"entries": [
            {"name": "bin", "type": "dir"},
            {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
            {"name": "bin/sh", "type": "symlink", "link": "busybox"},
            {"name": "bin/suid", "data": "x", "mode": 0o4755},
            {"name": "etc", "type": "dir"},
            {"name": "etc/ssh", "type": "dir"},
            {"name": "etc/ssh/ssh_host_ed25519_key", "data": "PRIVATE", "mode": 0o600},
            {"name": "etc/ssh/ssh_host_ed25519_key.pub", "data": "ssh-ed25519 AAAA root@build"},
            {"name": "etc/ssh/sshd_config", "data": "PermitRootLogin no\n"},
            {"name": "etc/machine-id", "data": "0123456789abcdef0123456789abcdef\n"},
            {"name": "root", "type": "dir", "mode": 0o700},
            {"name": "root/.bash_history", "data": "curl -u admin:hunter2 ...\n"},
            {"name": "root/.docker", "type": "dir"},
            {"name": "root/.docker/config.json", "data": "{\"auths\": {\"r\": {\"auth\": \"c2VjcmV0\"}}}"},
            {"name": "home/app/.git-credentials", "data": "https://u:token@git.example\n"},
            {"name": "srv", "type": "dir"},
            {"name": "srv/x", "type": "dir", "mode": 0o777},
            {"name": "srv/f", "data": "anyone may write", "mode": 0o666},
            {"name": "srv/g", "data": "lower", "mode": 0o666},
            {"name": "tmp", "type": "dir", "mode": 0o1777},
        ]}, {"entries": [
            {"name": "srv/g", "data": "upper", "mode": 0o644},
            {"name": "app.sh", "data": APP, "mode": 0o755},
        ]}], "config": {"Entrypoint": ["/app.sh"], "Env": ["PATH=/bin"]}}),
    );
}

#[test]
fn hardening_removes_identities_histories_and_credentials_and_fixes_modes() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    identities_image(&layout);
    let source = format!("oci:{}:v1", layout.display());

    // On by default.
    let image = dir.path().join("hardened.ext4");
    let meta = built(&source, &image, &[]);
    let r = rules(&meta);
    assert_eq!(
        paths(&r, "ssh-host-keys"),
        [
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key.pub"
        ]
    );
    assert_eq!(paths(&r, "machine-id"), ["/etc/machine-id"]);
    assert_eq!(paths(&r, "shell-history"), ["/root/.bash_history"]);
    assert_eq!(
        paths(&r, "credentials"),
        ["/home/app/.git-credentials", "/root/.docker/config.json"]
    );
    // srv/g's world-writable version is masked by the upper layer's.
    assert_eq!(paths(&r, "world-writable"), ["/srv/f", "/srv/x"]);
    assert_eq!(paths(&r, "setuid-setgid"), ["/bin/suid"]);
    assert_eq!(meta["policy"]["ssh_host_keys_regenerated_at_boot"], true);
    assert_eq!(meta["policy"]["harden"], true);
    assert_eq!(meta["policy"]["optimize_for_size"], false);

    for gone in [
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "/root/.bash_history",
        "/root/.docker/config.json",
        "/home/app/.git-credentials",
    ] {
        assert!(
            stat(&image, gone).is_empty(),
            "{gone} is still in the image"
        );
    }
    assert_eq!(
        debugfs_cat(&image, "/etc/ssh/sshd_config"),
        "PermitRootLogin no\n"
    );
    assert!(stat(&image, "/etc/machine-id").contains("Size: 0"));
    assert!(!stat(&image, "/.builderd/ssh-host-keys-removed").is_empty());
    assert_eq!(mode(&image, "/srv/x"), "01777", "the sticky bit added");
    assert_eq!(mode(&image, "/srv/f"), "0664", "others' write bit taken");
    assert_eq!(mode(&image, "/srv/g"), "0644");
    assert_eq!(mode(&image, "/tmp"), "01777");
    assert_eq!(mode(&image, "/bin/suid"), "04755", "listed, not changed");

    // Each VM of the image makes its own machine-id.
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let (console, _, line) = boot_for(&image, "120", "app: id=");
            assert!(
                console.contains("has no ssh-keygen to make new ones"),
                "the init says why it made no host keys:\n{console}"
            );
            assert!(
                line.len() == 32 && line.bytes().all(|b| b.is_ascii_hexdigit()),
                "{line:?}"
            );
            line
        })
        .collect();
    assert_ne!(ids[0], ids[1], "two VMs of one image share a machine-id");
    assert!(
        stat(&image, "/etc/machine-id").contains("Size: 0"),
        "--snapshot kept the image"
    );

    // --no-harden leaves it all as the image has it.
    let plain = dir.path().join("plain.ext4");
    let meta = built(&source, &plain, &["--no-harden"]);
    assert!(meta.get("policy").is_none(), "{meta}");
    assert_eq!(
        debugfs_cat(&plain, "/etc/ssh/ssh_host_ed25519_key"),
        "PRIVATE"
    );
    assert_eq!(mode(&plain, "/srv/x"), "0777");

    // An operator's policy strips setuid bits, removes and sets modes.
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"strip_setuid": true, "allow_setuid": ["/bin/other"], "remove": ["/srv"],
            "modes": {"/etc/ssh/sshd_config": "0600"}}"#,
    )
    .unwrap();
    let strict = dir.path().join("strict.ext4");
    let meta = built(
        &source,
        &strict,
        &["--hardening-policy", policy.to_str().unwrap()],
    );
    let r = rules(&meta);
    assert_eq!(paths(&r, "setuid-setgid"), ["/bin/suid"]);
    assert_eq!(mode(&strict, "/bin/suid"), "0755");
    assert_eq!(
        paths(&r, "policy-remove"),
        ["/srv", "/srv/f", "/srv/g", "/srv/x"]
    );
    assert!(stat(&strict, "/srv").is_empty());
    assert_eq!(mode(&strict, "/etc/ssh/sshd_config"), "0600");

    // A policy that is not one is refused by name, and nothing is written.
    std::fs::write(&policy, r#"{"remove": ["srv"]}"#).unwrap();
    let out = dir.path().join("refused.ext4");
    let err = assert_failed(
        &build(
            &source,
            &out,
            &["--hardening-policy", policy.to_str().unwrap()],
        ),
        &out,
    );
    assert!(
        err.contains("policy.json") && err.contains("\"srv\" is not an absolute path"),
        "{err}"
    );
}

#[test]
fn optimize_leaves_out_caches_docs_other_languages_tmp_and_logs_but_not_licences() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    let bytes = |n: usize| "x".repeat(n);
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"entries": [
            {"name": "var/cache/apt/archives/partial", "type": "dir"},
            {"name": "var/cache/apt/archives/tool_1.0_amd64.deb", "data": bytes(1000)},
            {"name": "var/cache/apt/pkgcache.bin", "data": bytes(300)},
            {"name": "var/lib/apt/lists/partial", "type": "dir"},
            {"name": "var/lib/apt/lists/deb.debian.org_dists_bookworm_main_Packages", "data": bytes(2000)},
            {"name": "var/lib/apt/extended_states", "data": "Package: tool\n"},
            {"name": "usr/share/doc/tool", "type": "dir"},
            {"name": "usr/share/doc/tool/copyright", "data": "GPL-2+"},
            {"name": "usr/share/doc/tool/README.md", "data": bytes(500)},
            {"name": "usr/share/doc/lib", "type": "symlink", "link": "tool"},
            {"name": "usr/share/man/man1", "type": "dir"},
            {"name": "usr/share/man/man1/tool.1.gz", "data": bytes(40)},
            {"name": "usr/share/locale/locale.alias", "data": "alias"},
            {"name": "usr/share/locale/de/LC_MESSAGES/tool.mo", "data": bytes(70)},
            {"name": "usr/share/locale/fr", "type": "dir"},
            {"name": "usr/share/locale/fr/LC_MESSAGES/tool.mo", "data": bytes(80)},
            {"name": "tmp", "type": "dir", "mode": 0o1777},
            {"name": "tmp/build", "type": "dir"},
            {"name": "tmp/build/main.o", "data": bytes(600)},
            {"name": "var/tmp/x", "data": bytes(5)},
            {"name": "var/log/apt", "type": "dir"},
            {"name": "var/log/dpkg.log", "data": bytes(90)},
            {"name": "root/.cache/pip/http/ab/cd", "data": bytes(800)},
            {"name": "app/main", "data": "the app"},
        ]}], "config": {"Env": ["PATH=/bin", "LANG=de_DE.UTF-8"], "Cmd": ["/app/main"]}}),
    );
    let image = dir.path().join("small.ext4");
    let meta = built(
        &format!("oci:{}:v1", layout.display()),
        &image,
        &["--optimize", "--no-harden"],
    );
    let r = rules(&meta);
    let counts = |rule: &str| r.get(rule).map(|r| (r.1, r.2));
    assert_eq!(counts("apt-cache"), Some((2, 1300)));
    assert_eq!(counts("apt-lists"), Some((1, 2000)));
    // The README and the man page's file and directory.
    assert_eq!(counts("docs"), Some((1, 500)));
    assert_eq!(counts("man-info"), Some((2, 40)));
    // fr's catalog and its directory (LC_MESSAGES has no entry of its
    // own); de stays (LANG).
    assert_eq!(counts("locales"), Some((2, 80)));
    assert_eq!(counts("tmp"), Some((3, 605)));
    assert_eq!(counts("logs"), Some((1, 90)));
    assert_eq!(counts("pip-cache"), Some((1, 800)));
    assert_eq!(
        meta["policy"]["bytes_removed"],
        1300 + 2000 + 500 + 40 + 80 + 605 + 90 + 800
    );

    for kept in [
        "/var/cache/apt/archives/partial",
        "/var/lib/apt/lists/partial",
        "/var/lib/apt/extended_states",
        "/usr/share/doc/tool/copyright",
        "/usr/share/doc/lib",
        "/usr/share/locale/locale.alias",
        "/usr/share/locale/de/LC_MESSAGES/tool.mo",
        "/var/log/apt",
        "/app/main",
    ] {
        assert!(!stat(&image, kept).is_empty(), "{kept} was left out");
    }
    for gone in [
        "/var/cache/apt/archives/tool_1.0_amd64.deb",
        "/usr/share/doc/tool/README.md",
        "/usr/share/man/man1",
        "/usr/share/locale/fr",
        "/tmp/build",
        "/var/tmp/x",
        "/var/log/dpkg.log",
        "/root/.cache/pip/http/ab/cd",
    ] {
        assert!(
            stat(&image, gone).is_empty(),
            "{gone} is still in the image"
        );
    }
    assert_eq!(mode(&image, "/tmp"), "01777", "/tmp itself stays");
}

#[test]
fn an_apk_database_loses_an_unneeded_compiler_and_keeps_a_needed_dev_package() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    let installed = "C:Q1aaa=\nP:libfoo-dev\nV:1.0-r0\nA:x86_64\nI:4096\np:so:libfoo.so.1=1.0\n\
F:usr/lib\nR:libfoo.so.1\nF:usr/include\nR:foo.h\n\n\
C:Q1bbb=\nP:app\nV:2.0-r0\nA:x86_64\nI:100\nD:so:libfoo.so.1\nF:usr/bin\nR:app\n\n\
C:Q1ccc=\nP:gcc\nV:12-r0\nA:x86_64\nI:50000\nD:binutils\nF:usr/bin\nR:gcc\nF:usr/libexec/gcc\nR:cc1\n\n";
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"entries": [
            {"name": "lib/apk/db/installed", "data": installed},
            {"name": "lib/apk/world", "data": "app\ngcc\n"},
            {"name": "usr/lib/libfoo.so.1", "data": "ELF foo"},
            {"name": "usr/include/foo.h", "data": "int foo(void);"},
            {"name": "usr/bin/app", "data": "the app", "mode": 0o755},
            {"name": "usr/bin/gcc", "data": "a compiler", "mode": 0o755},
            {"name": "usr/libexec/gcc/cc1", "data": "its backend", "mode": 0o755},
        ]}], "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/usr/bin/app"]}}),
    );
    let image = dir.path().join("apk.ext4");
    let meta = built(
        &format!("oci:{}:v1", layout.display()),
        &image,
        &["--remove-dev-packages"],
    );
    let packages = &meta["policy"]["packages"];
    assert_eq!(packages["managers"], json!(["apk"]));
    assert_eq!(
        packages["removed"],
        json!([{"name": "gcc", "bytes": 50000}])
    );
    assert_eq!(
        packages["kept_because_needed"],
        json!([{"name": "libfoo-dev", "bytes": 4096, "needed_by": "app", "dependency": "so:libfoo.so.1"}])
    );
    for gone in ["/usr/bin/gcc", "/usr/libexec/gcc/cc1", "/usr/libexec/gcc"] {
        assert!(
            stat(&image, gone).is_empty(),
            "{gone} is still in the image"
        );
    }
    assert_eq!(debugfs_cat(&image, "/usr/include/foo.h"), "int foo(void);");
    assert_eq!(debugfs_cat(&image, "/usr/bin/app"), "the app");
    let db = debugfs_cat(&image, "/lib/apk/db/installed");
    assert!(
        db.contains("P:libfoo-dev\n") && db.contains("P:app\n"),
        "{db}"
    );
    assert!(!db.contains("P:gcc\n"), "{db}");
    assert_eq!(debugfs_cat(&image, "/lib/apk/world"), "app\n");
}

/// The Debian image's app, run by systemd: once sshd is up, this VM's host
/// key and machine-id, and hello-app's line.
const DEBIAN_APP: &str = "for i in $(seq 240); do [ \"$(systemctl is-active ssh)\" = active ] && break; sleep 0.5; done; \
    echo \"app: ssh=$(systemctl is-active ssh) key=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2) id=$(cat /etc/machine-id) $(hello-app)\"";

/// Every regular file under `dir` (recursively), relative to `root`.
fn files_under(root: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn a_debian_build_machine_sheds_its_tools_stays_consistent_and_boots_with_its_own_keys() {
    if !root_or_skip() {
        return; // debootstrap, the loop mount and chroot need root
    }
    let dir = tmp();
    let tar = common::debian::build_tools_tar();
    let layout = dir.path().join("layout");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"compression": "zstd", "tar": tar.to_str().unwrap()}],
        "config": {
            "Cmd": ["/bin/sh", "-c", DEBIAN_APP],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
        }}),
    );
    let source = format!("oci:{}:v1", layout.display());
    let plain = dir.path().join("plain.ext4");
    let plain_meta = built(&source, &plain, &["--no-harden", "--init", "systemd"]);
    let small = dir.path().join("small.ext4");
    let meta = built(
        &source,
        &small,
        &[
            "--optimize",
            "--remove-dev-packages",
            "--init",
            "systemd",
            "--free",
            "64M",
        ],
    );

    let packages = &meta["policy"]["packages"];
    let removed: Vec<&str> = packages["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for tool in [
        "build-essential",
        "gcc",
        "gcc-12",
        "g++",
        "g++-12",
        "cpp-12",
        "make",
        "libc6-dev",
        "dpkg-dev",
        "binutils",
        "libstdc++-12-dev",
        "libgcc-12-dev",
    ] {
        assert!(
            removed.contains(&tool),
            "{tool} was not removed: {removed:?}"
        );
    }
    for runtime in [
        "python3",
        "libc6",
        "libstdc++6",
        "systemd",
        "openssh-server",
        "hello-app",
    ] {
        assert!(!removed.contains(&runtime), "{runtime} was removed");
    }
    assert_eq!(
        packages["kept_because_needed"],
        json!([{"name": "linux-libc-dev", "bytes": packages["kept_because_needed"][0]["bytes"],
                "needed_by": "hello-app", "dependency": "linux-libc-dev"}])
    );
    let before = plain_meta["image"]["file_data_bytes"].as_u64().unwrap();
    let after = meta["image"]["file_data_bytes"].as_u64().unwrap();
    eprintln!(
        "file data: {before} bytes as built, {after} with --optimize --remove-dev-packages ({:.2}); images {} and {} bytes",
        after as f64 / before as f64,
        plain_meta["image"]["size_bytes"],
        meta["image"]["size_bytes"]
    );
    assert!(after * 2 <= before, "{after} is more than half of {before}");

    // The tree, read back from a loop mount and copied where the image's
    // own dpkg and apt can check it.
    let copy = dir.path().join("tree");
    {
        let m = Mount::new(&small);
        run(std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", m.path().display()))
            .arg(&copy));
    }
    for gone in [
        "usr/bin/gcc-12",
        "usr/bin/x86_64-linux-gnu-gcc-12",
        "usr/bin/cc",
        "usr/bin/make",
        "usr/include/stdio.h",
        "usr/include/c++",
        "usr/lib/gcc",
        "var/lib/dpkg/info/gcc-12.list",
        "etc/ssh/ssh_host_ed25519_key",
    ] {
        assert!(
            std::fs::symlink_metadata(copy.join(gone)).is_err(),
            "{gone} is still in the image"
        );
    }
    for kept in [
        "usr/include/linux/types.h",
        "usr/bin/hello-app",
        "usr/bin/python3",
        "usr/sbin/sshd",
    ] {
        assert!(copy.join(kept).exists(), "{kept} is gone");
    }
    assert_eq!(
        files_under(&copy, "var/lib/apt/lists"),
        Vec::<String>::new()
    );
    assert_eq!(files_under(&copy, "usr/share/man"), Vec::<String>::new());
    let docs = files_under(&copy, "usr/share/doc");
    assert!(!docs.is_empty());
    assert!(
        docs.iter().all(|d| d.ends_with("/copyright")),
        "docs besides copyright files: {:?}",
        docs.iter()
            .filter(|d| !d.ends_with("/copyright"))
            .collect::<Vec<_>>()
    );
    let audit = run(std::process::Command::new("chroot")
        .arg(&copy)
        .args(["dpkg", "--audit"]));
    assert!(
        audit.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
    run(std::process::Command::new("chroot")
        .arg(&copy)
        .args(["apt-get", "check"]));

    // Two VMs of the one artifact: each makes its own host keys and
    // machine-id, sshd runs, and so does the app.
    let lines: Vec<String> = (0..2)
        .map(|_| {
            let (console, code, line) = boot_for(&small, "300", "app: ");
            assert_eq!(code, Some(0), "{console}");
            line
        })
        .collect();
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .to_string()
    };
    for line in &lines {
        assert_eq!(field(line, "ssh="), "active", "{line}");
        assert!(field(line, "key=").starts_with("SHA256:"), "{line}");
        assert_eq!(field(line, "id=").len(), 32, "{line}");
        assert!(line.ends_with("hello-app: python 3.11.2"), "{line}");
    }
    assert_ne!(field(&lines[0], "key="), field(&lines[1], "key="));
    assert_ne!(field(&lines[0], "id="), field(&lines[1], "id="));
    e2fsck(&small);

    // DIRECT_EXEC: builderd-init makes the keys and the machine-id.
    let direct = dir.path().join("direct.ext4");
    built(
        &source,
        &direct,
        &[
            "--optimize",
            "--remove-dev-packages",
            "--cmd",
            r#"["/bin/sh", "-c", "echo \"app: key=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2) id=$(cat /etc/machine-id)\""]"#,
        ],
    );
    let (console, code, line) = boot_for(&direct, "120", "app: ");
    assert!(
        console.contains("builderd-init: made this VM's SSH host keys"),
        "{console}"
    );
    assert_eq!(code, Some(0), "{console}");
    let line = line.as_str();
    assert!(field(line, "key=").starts_with("SHA256:"), "{line}");
    assert_eq!(field(line, "id=").len(), 32, "{line}");
}

#[test]
fn the_service_hardens_by_the_operators_policy_unless_a_build_turns_it_off() {
    use common::registry::TestRegistry;
    use common::server::{config, download_and_check, Server};
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let layout = dir.path().join("layout");
    identities_image(&layout);
    reg.push(&layout, "v1", "hardening/app:v1", None);
    let image = format!("{}/hardening/app:v1", reg.addr);
    let policy = dir.path().join("policy.json");

    // A policy that is not one stops the server from starting, by name.
    std::fs::write(&policy, r#"{"strip_setuid": "yes"}"#).unwrap();
    let o = builderd()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("refused"))
        .arg("--hardening-policy")
        .arg(&policy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("policy.json"), "{err}");

    std::fs::write(&policy, r#"{"strip_setuid": true}"#).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--hardening-policy", policy.to_str().unwrap()],
    );
    // What builds read is the policy as it was at start.
    std::fs::write(&policy, r#"{"strip_setuid": false}"#).unwrap();
    let key = server.tenant("acme", "pro");
    let meta_of = |status: &Value| -> Value {
        serde_json::from_str(status["artifact"]["metadataJson"].as_str().unwrap()).unwrap()
    };

    let hardened = server.finished(&key, &config(&image));
    assert_eq!(hardened["state"], "BUILD_STATE_COMPLETED", "{hardened}");
    let meta = meta_of(&hardened);
    let r = rules(&meta);
    assert_eq!(paths(&r, "setuid-setgid"), ["/bin/suid"]);
    assert_eq!(
        paths(&r, "ssh-host-keys"),
        [
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key.pub"
        ]
    );
    let id = hardened["buildId"].as_str().unwrap();
    let file = dir.path().join("hardened.ext4");
    std::fs::write(&file, download_and_check(&server, &key, id, dir.path())).unwrap();
    assert_eq!(mode(&file, "/bin/suid"), "0755", "stripped by the policy");

    // harden: false is another artifact, as the image has it.
    let mut plain = config(&image);
    plain["config"]["strategy"]["docker_strategy"]["harden"] = json!(false);
    let unhardened = server.finished(&key, &plain);
    assert_eq!(unhardened["state"], "BUILD_STATE_COMPLETED", "{unhardened}");
    assert_ne!(unhardened["cacheHit"], true);
    assert!(meta_of(&unhardened).get("policy").is_none());
    let id = unhardened["buildId"].as_str().unwrap();
    let file = dir.path().join("plain.ext4");
    std::fs::write(&file, download_and_check(&server, &key, id, dir.path())).unwrap();
    assert_eq!(
        debugfs_cat(&file, "/etc/ssh/ssh_host_ed25519_key"),
        "PRIVATE"
    );
    assert_eq!(mode(&file, "/bin/suid"), "04755");
}
