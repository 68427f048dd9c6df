//! What a new user trips over, run the way a user would: the CLI and curl
//! against a server the test starts. Each test is one finding of the
//! first-use review: a mistake gets a clear answer, never a silent surprise.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::fake::Fake;
use common::images::{build, make_image};
use common::registry::TestRegistry;
use common::server::{config, push_app, Server};
use common::*;
use serde_json::{json, Value};

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_second_server_on_a_data_directory_is_refused_and_the_first_keeps_its_builds() {
    let dir = tmp();
    let data = dir.path().join("data");
    let busy = Fake::on("127.0.0.1", |_| {
        common::fake::Reply::new("503 Service Unavailable", "")
    });
    let first = Server::start(&data, &[]);
    let key = first.tenant("acme", "pro");
    let mut c = config(&format!("{}/x/app:1", busy.addr));
    c["config"]["retry_policy"] = json!({"max_retries": 10, "backoff_strategy": "fixed",
        "base_delay": "1h", "max_delay": "1h", "retry_on": ["NETWORK_ERROR"]});
    let id = first.create(&key, &c);
    first.wait_for(
        &key,
        &id,
        &["BUILD_STATE_PREPARING"],
        Duration::from_secs(30),
    );

    let t = std::time::Instant::now();
    let second = builderd()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", server::free_port()),
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let (_, err) = text(&second);
    assert!(!second.status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        err.contains("is in use by another builderd serve")
            && err.contains(&format!("pid {}", first.pid())),
        "{err}"
    );
    // The first server's build is as it was: running, once, no retries.
    let s = first.status(&key, &id);
    assert_eq!(s["state"], "BUILD_STATE_PREPARING", "{s}");
    assert_eq!(s["attempts"], 1, "{s}");
    // The commands made to run beside a server still do.
    let other = first.tenant("other", "free");
    assert!(other.starts_with("bd_"));
    let ls = run(builderd()
        .args(["cache", "ls"])
        .arg("--data-dir")
        .arg(&data));
    assert!(ls.status.success());
}

#[test]
fn typos_in_a_build_config_are_refused_naming_the_field() {
    let dir = tmp();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("acme", "pro");
    let mut typo = config("127.0.0.1:5000/app:v1");
    typo["config"]["target"]["microvm_rootfs"]["compresion"] = json!("zstd");
    let a = server.call("CreateBuild", Some(&key), &[], &typo.to_string());
    assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["code"], "invalid_argument");
    assert_eq!(
        a.json()["message"],
        "config.target.microvm_rootfs.compresion: no such field; did you mean \"compression\"?"
    );
    let mut short = config("127.0.0.1:5000/app:v1");
    short["config"]["strategy"] = json!({"docker": {}});
    let a = server.call("CreateBuild", Some(&key), &[], &short.to_string());
    assert_eq!(a.status, 400);
    assert!(a.json()["message"]
        .as_str()
        .unwrap()
        .contains("config.strategy.docker: no such field; did you mean \"docker_strategy\"?"));
    // lowerCamelCase is the same field.
    let mut camel = config("127.0.0.1:5000/app:v1");
    camel["config"]["target"]["microvmRootfs"] = json!({"sizeLimitBytes": "1000000000"});
    camel["config"]["target"]
        .as_object_mut()
        .unwrap()
        .remove("microvm_rootfs");
    assert_eq!(
        server
            .call("CreateBuild", Some(&key), &[], &camel.to_string())
            .status,
        200
    );

    // No Content-Type: 415, saying which ones are taken.
    let a = server.curl(
        "/builder.v1.BuilderService/CreateBuild",
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {key}"),
            "-H",
            "Content-Type:",
            "--data-binary",
            "{}",
        ],
    );
    assert_eq!(a.status, 415);
    let body = String::from_utf8_lossy(&a.body);
    assert!(
        body.contains("application/json") && body.contains("application/grpc"),
        "{body}"
    );
}

/// Connections `builderd ARGS` tried to make (TCP and UDP, not local
/// sockets), as strace saw them; and its output.
fn connections(args: &[&str], cwd: &std::path::Path) -> (usize, std::process::Output) {
    let trace = cwd.join("connect.trace");
    let o = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=connect", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_builderd"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("strace is installed");
    let log = std::fs::read_to_string(&trace).unwrap_or_default();
    let n = log
        .lines()
        .filter(|l| l.contains("connect(") && (l.contains("AF_INET") || l.contains("AF_INET6")))
        .count();
    (n, o)
}

#[test]
fn a_path_source_is_refused_with_a_hint_and_no_connection() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"entries": [{"name": "a", "data": "a"}]}]}),
    );
    let out = dir.path().join("out.ext4");
    let o = out.to_str().unwrap();
    for (source, hint) in [
        (
            layout.to_str().unwrap().to_string(),
            format!("oci:{}", layout.display()),
        ),
        ("./layout".to_string(), "oci:./layout".to_string()),
        // A bare name that is a directory here is that directory.
        ("layout".to_string(), "oci:layout".to_string()),
    ] {
        let (n, result) = connections(&["build", &source, "-o", o], dir.path());
        let (_, err) = text(&result);
        assert!(!result.status.success(), "{source}");
        assert!(
            err.contains(&hint) && err.contains("oci-archive:"),
            "{source}: {err}"
        );
        assert_eq!(n, 0, "{source}: {n} connections tried");
    }
    // And what the hint says works.
    let ok = build(&format!("oci:{}:v1", layout.display()), &out, &[]);
    assert!(ok.status.success(), "{}", text(&ok).1);
}

#[test]
fn global_options_go_anywhere_and_a_server_needs_no_scheme() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("acme", "pro");
    let host_port = server.url.trim_start_matches("http://").to_string();
    // --key and --server after the subcommand, the server as --listen takes it.
    let o = builderd()
        .args([
            "client",
            "create",
            &format!("{}/app:v1", reg.addr),
            "--wait",
        ])
        .args(["--key", &key, "--server", &host_port])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    // A summary, not the whole message (--json gives that).
    assert!(
        out.contains(" COMPLETED") && out.contains("sha256 "),
        "{out}"
    );
    assert!(!out.contains("metadataJson"), "{out}");
    let id = out.lines().next().unwrap();
    let o = builderd()
        .args([
            "client", "status", id, "--json", "--key", &key, "--server", &host_port,
        ])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    let meta: Value =
        serde_json::from_str(status["artifact"]["metadataJson"].as_str().unwrap()).unwrap();
    // The metadata says what the VM is called (the default, written out).
    assert_eq!(meta["run_config"]["hostname"], "builderd");

    let o = builderd()
        .args([
            "client", "list", "--state", "done", "--key", &key, "--server", &host_port,
        ])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("not a build state; use one of queued, running"),
        "{err}"
    );
    let o = builderd()
        .args(["client", "list", "--server", "ftp://x", "--key", &key])
        .output()
        .unwrap();
    assert!(
        text(&o).1.contains("give http://HOST:PORT"),
        "{}",
        text(&o).1
    );
}

#[test]
fn the_data_directory_is_told_and_set_by_the_environment() {
    let dir = tmp();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let o = builderd()
        .args(["tenant", "create", "envco", "--tier", "pro"])
        .env("BUILDERD_DATA_DIR", &data)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("data directory {}", data.display())),
        "{err}"
    );
    let key = out.trim().lines().last().unwrap();
    // The running server on that directory takes the key.
    assert_eq!(
        server.call("GetTenantQuotas", Some(key), &[], "{}").status,
        200
    );
    // Without it, the default is named, so a mistake shows.
    let home = dir.path().join("home");
    let o = builderd()
        .args(["tenant", "create", "lost", "--tier", "pro"])
        .env_remove("BUILDERD_DATA_DIR")
        .env("XDG_DATA_HOME", &home)
        .output()
        .unwrap();
    assert!(text(&o).1.contains(&format!(
        "data directory {}",
        home.join("builderd").display()
    )));
}

#[test]
fn registry_mistakes_get_messages_that_name_them() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let out = dir.path().join("out.ext4");
    let o = build(&format!("{}/app:nope", reg.addr), &out, &[]);
    let (_, err) = text(&o);
    assert!(err.contains("/app: tag nope not found"), "{err}");
    let o = build(&format!("{}/app:1:x", reg.addr), &out, &[]);
    let (_, err) = text(&o);
    assert!(err.contains("a tag follows a single ':'"), "{err}");
    // One layer is "1 layer".
    let layout = dir.path().join("one");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"entries": [{"name": "a", "data": "a"}]}]}),
    );
    let o = build(&format!("oci:{}:v1", layout.display()), &out, &[]);
    let (out_text, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out_text.contains(": 1 layer, 1 entry ("), "{out_text}");
}

#[test]
fn sizes_with_si_suffixes_are_powers_of_ten() {
    let dir = tmp();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a"), "a").unwrap();
    for (size, bytes) in [
        ("16384kB", 16_384_000u64),
        ("16M", 16 << 20),
        ("16MiB", 16 << 20),
    ] {
        let out = dir.path().join(format!("{size}.ext4"));
        mkfs(&tree, &out, &["--size", size]);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), bytes, "{size}");
        e2fsck(&out);
    }
}

#[test]
fn small_surprises_are_gone() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    // The delivery counter is there before any delivery.
    let metrics = String::from_utf8(server.curl("/metrics", &[]).body).unwrap();
    assert!(
        metrics.contains(r#"builderd_webhook_deliveries_total{outcome="delivered"} 0"#),
        "{metrics}"
    );
    let key = server.tenant("acme", "pro");
    let id = server.create(&key, &config(&format!("{}/app:v1", reg.addr)));
    let s = server.wait_for(
        &key,
        &id,
        &["BUILD_STATE_COMPLETED"],
        Duration::from_secs(60),
    );
    // The config blob counts its bytes; no lock files stay in the cache.
    let ls = run(builderd()
        .args(["cache", "ls"])
        .arg("--data-dir")
        .arg(&data));
    let listing = String::from_utf8(ls.stdout).unwrap();
    let meta: Value =
        serde_json::from_str(s["artifact"]["metadataJson"].as_str().unwrap()).unwrap();
    let config_digest = meta["config_digest"].as_str().unwrap();
    let line = listing.lines().find(|l| l.contains(config_digest)).unwrap();
    assert!(!line.contains(" 0 B "), "{line}");
    let locks: Vec<_> = std::fs::read_dir(data.join("blobs/partial"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(locks.is_empty(), "{locks:?}");

    // Booting a compressed copy is refused on the host, saying what to do.
    let out = dir.path().join("img.ext4");
    let built = build(
        &format!("{}/app:v1", reg.addr),
        &out,
        &["--compression", "zstd", "--no-cache"],
    );
    assert!(built.status.success(), "{}", text(&built).1);
    let zst = dir.path().join("img.ext4.zst");
    let o = builderd()
        .args(["boot"])
        .arg(&zst)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("is a zstd copy, not a disk image") && err.contains("zstd -d"),
        "{err}"
    );
}
