//! Archive builds through the service: an archive uploaded with
//! `PUT UploadArchive` or gRPC client streaming (streamed, hashed) and built
//! from `upload://ID`;
//! uploads are their tenant's alone, count in its storage quota, and go
//! once unused for the server's upload lifetime; a hostile archive fails
//! its build with the entry and the rule. Real parts: `builderd serve`,
//! curl, Python's grpcio, Debian's docker-registry with a busybox runtime
//! image.

mod common;

use std::process::Command;
use std::time::Duration;

use common::projects::busybox_image;
use common::registry::TestRegistry;
use common::server::{download_and_check, python_client, python_stubs, Server};
use common::*;
use serde_json::{json, Value};

fn upload(server: &Server, key: &str, file: &std::path::Path) -> common::server::Answer {
    server.curl(
        "/builder.v1.BuilderService/UploadArchive",
        &[
            "-X",
            "PUT",
            "-H",
            &format!("Authorization: Bearer {key}"),
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    )
}

/// A registry holding a busybox image, and a base-image table whose
/// `static` stack is that image.
fn static_runtime(dir: &std::path::Path) -> (TestRegistry, std::path::PathBuf) {
    let reg = TestRegistry::start(None);
    let base = busybox_image(&reg, dir, "web", json!({"Env": ["PATH=/bin"]}), true);
    let table = dir.join("base-images.json");
    std::fs::write(&table, json!({"static": {"default": base}}).to_string()).unwrap();
    (reg, table)
}

fn archive_config(id: &str, strategy: Value) -> Value {
    json!({"config": {
        "source": {"archive": {"archive_url": format!("upload://{id}"), "archive_type": "zip"}},
        "strategy": {"archive_strategy": strategy},
    }})
}

#[test]
fn uploads_build_stay_with_their_tenant_count_in_its_quota_and_expire() {
    let dir = tmp();
    let (_reg, table) = static_runtime(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--base-images",
            table.to_str().unwrap(),
            "--upload-lifetime",
            "4s",
        ],
    );
    let pro = server.tenant("acme", "pro");
    let free = server.tenant("other", "free");
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("css")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>uploaded</h1>\n").unwrap();
    std::fs::write(site.join("css/a.css"), "h1 {}\n").unwrap();
    let zip = dir.path().join("site.zip");
    run(Command::new("zip")
        .args(["-q", "-r"])
        .arg(&zip)
        .arg(".")
        .current_dir(&site));
    let bytes = std::fs::read(&zip).unwrap();

    // Uploaded: its id, and the sha256 of what was sent.
    let a = upload(&server, &pro, &zip);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let answer = a.json();
    let id = answer["uploadId"].as_str().unwrap().to_string();
    assert_eq!(answer["sha256"], common::server::sha256_hex(&bytes));
    assert_eq!(answer["sizeBytes"], bytes.len().to_string());
    // It counts in the tenant's storage.
    let quotas = server.ok("GetTenantQuotas", &pro, "{}");
    assert_eq!(
        quotas["usage"]["storageBytes"],
        bytes.len().to_string(),
        "{quotas}"
    );

    // Another tenant can neither build from it nor learn it exists.
    let other = server.call(
        "CreateBuild",
        Some(&free),
        &[],
        &archive_config(&id, json!({"output_path": "/app"})).to_string(),
    );
    assert_eq!(
        other.status,
        404,
        "{}",
        String::from_utf8_lossy(&other.body)
    );
    assert!(String::from_utf8_lossy(&other.body).contains(&format!("no upload {id}")));

    // Its tenant builds it: nothing to build, the site over the runtime.
    let status = server.finished(
        &pro,
        &archive_config(&id, json!({"runtime": "static", "output_path": "/srv/www"})),
    );
    assert_eq!(status["state"], "BUILD_STATE_COMPLETED", "{status}");
    let build = status["buildId"].as_str().unwrap();
    let image = download_and_check(&server, &pro, build, dir.path());
    let out = dir.path().join("site.ext4");
    std::fs::write(&out, image).unwrap();
    e2fsck(&out);
    assert_eq!(
        common::projects::debugfs_cat(&out, "/srv/www/index.html"),
        "<h1>uploaded</h1>\n"
    );
    let logs = common::server::logs(&server, &pro, build);
    assert!(logs.contains("nothing to build"), "{logs}");

    // The client uploads and builds in one step, and uploads alone.
    let client = |args: &[&str]| {
        builderd()
            .args(["client", "--server", &server.url, "--key", &pro])
            .args(args)
            .output()
            .unwrap()
    };
    let create = |extra: &[&str]| {
        let args = [
            "create",
            "--archive",
            zip.to_str().unwrap(),
            "--runtime",
            "static",
        ];
        client(&[&args[..], extra, &["--wait"]].concat())
    };
    let o = create(&["--archive-type", "zip", "--output-path", "/srv/site"]);
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains("uploaded") && said.contains(&common::server::sha256_hex(&bytes)),
        "{said}"
    );
    let built = said
        .lines()
        .find_map(|l| l.strip_prefix("builderd: created "))
        .unwrap()
        .trim()
        .to_string();
    let image = download_and_check(&server, &pro, &built, dir.path());
    std::fs::write(&out, image).unwrap();
    e2fsck(&out);
    assert_eq!(
        common::projects::debugfs_cat(&out, "/srv/site/css/a.css"),
        "h1 {}\n"
    );
    // The type must agree with the bytes.
    let o = create(&["--archive-type", "tar.gz"]);
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{said}");
    assert!(said.contains("tar.gz"), "{said}");
    let o = client(&["upload", zip.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(last.starts_with("upload_"), "{last}");

    // An upload past the free tier's room (1 GiB) is refused as it streams,
    // and leaves nothing behind.
    let declared = server.curl(
        "/builder.v1.BuilderService/UploadArchive",
        &[
            "-X",
            "PUT",
            "-H",
            &format!("Authorization: Bearer {free}"),
            "-H",
            &format!("Content-Length: {}", 2u64 << 30),
            "--data-binary",
            "x",
            "--max-time",
            "10",
        ],
    );
    assert_eq!(
        declared.status,
        429,
        "{}",
        String::from_utf8_lossy(&declared.body)
    );
    let streamed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 1100M /dev/zero | curl -s -o /dev/stderr -w '%{{http_code}}' -X PUT \
             -H 'Authorization: Bearer {free}' -T - {}/builder.v1.BuilderService/UploadArchive",
            server.url
        ))
        .output()
        .unwrap();
    // The server answers as soon as the body passes the room, while curl
    // is still sending: curl may see the 429, or only the connection
    // closing under it. Either way nothing may be kept.
    let code = String::from_utf8_lossy(&streamed.stdout).to_string();
    let said = String::from_utf8_lossy(&streamed.stderr).to_string();
    if code == "429" {
        assert!(
            said.contains("resource_exhausted") && said.contains("storage quota"),
            "{said}"
        );
    } else {
        assert!(["100", "000"].contains(&code.as_str()), "{code}: {said}");
    }
    let quotas = server.ok("GetTenantQuotas", &free, "{}");
    let used = &quotas["usage"]["storageBytes"];
    assert!(used.is_null() || used == "0", "{quotas}");
    let uploads = server.data.join("uploads");
    let left = walk(&uploads.join("other"));
    assert!(left.is_empty(), "left behind: {left:?}");

    // A hostile archive fails its build, naming the entry and the rule.
    let corpus = dir.path().join("corpus");
    run(Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mkarchives.py"))
        .arg("hostile")
        .arg(&corpus));
    let bad = upload(&server, &pro, &corpus.join("dotdot.tar")).json();
    let config = json!({"config": {
        "source": {"archive": {"archive_url": format!("upload://{}", bad["uploadId"].as_str().unwrap())}},
        "strategy": {"archive_strategy": {"runtime": "static"}},
    }});
    let failed = server.finished(&pro, &config);
    assert_eq!(failed["state"], "BUILD_STATE_FAILED", "{failed}");
    let message = failed.to_string();
    assert!(
        message.contains(r#"\"../escaped.txt\": holds \"..\""#),
        "{message}"
    );

    // Unused for its lifetime, an upload goes: not_found, file and all.
    std::thread::sleep(Duration::from_secs(10));
    let expired = server.call(
        "CreateBuild",
        Some(&pro),
        &[],
        &archive_config(&id, json!({"runtime": "static"})).to_string(),
    );
    assert_eq!(
        expired.status,
        404,
        "{}",
        String::from_utf8_lossy(&expired.body)
    );
    assert!(walk(&uploads).is_empty(), "{:?}", walk(&uploads));
}

#[test]
fn grpc_clients_upload_by_client_streaming() {
    let dir = tmp();
    let (_reg, table) = static_runtime(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &["--base-images", table.to_str().unwrap()],
    );
    let key = server.tenant("acme", "pro");
    let other = server.tenant("other", "pro");
    // Some 600 KiB that do not compress: ten messages of 64 KiB.
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "<h1>streamed</h1>\n").unwrap();
    let mut noise = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), 600 << 10),
        &mut noise,
    )
    .unwrap();
    std::fs::write(site.join("noise.bin"), &noise).unwrap();
    let archive = dir.path().join("site.tar.gz");
    run(Command::new("tar")
        .args(["-czf"])
        .arg(&archive)
        .args(["-C", site.to_str().unwrap(), "."]));
    let bytes = std::fs::read(&archive).unwrap();

    let pygen = python_stubs(dir.path());
    let out = run(python_client("grpc_upload.py")
        .arg(&pygen)
        .arg(server.url.trim_start_matches("http://"))
        .arg(&key)
        .arg(&other)
        .arg(&archive));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["sha256"],
        common::server::sha256_hex(&bytes),
        "{report}"
    );
    assert_eq!(report["size_bytes"], bytes.len(), "{report}");
    assert!(report["messages_sent"].as_u64().unwrap() > 1, "{report}");
    assert!(report["expires_at"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["other_tenant"], "NOT_FOUND", "{report}");
    assert_eq!(report["state"], "BUILD_STATE_COMPLETED", "{report}");
    let image = download_and_check(
        &server,
        &key,
        report["build_id"].as_str().unwrap(),
        dir.path(),
    );
    let out = dir.path().join("streamed.ext4");
    std::fs::write(&out, image).unwrap();
    e2fsck(&out);
    assert_eq!(
        common::projects::debugfs_cat(&out, "/app/index.html"),
        "<h1>streamed</h1>\n"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn archive_urls_on_loopback_need_the_operator_and_their_pin_must_match() {
    let dir = tmp();
    let (_reg, table) = static_runtime(dir.path());
    let files = dir.path().join("served");
    std::fs::create_dir_all(files.join("site")).unwrap();
    std::fs::write(files.join("site/index.html"), "<h1>fetched</h1>\n").unwrap();
    run(Command::new("tar")
        .args(["-czf", "site.tar.gz", "-C", "site", "."])
        .current_dir(&files));
    let sha = common::server::sha256_hex(&std::fs::read(files.join("site.tar.gz")).unwrap());
    let port = common::server::free_port();
    let mut http = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&files)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/site.tar.gz");
    let config = |url: &str| {
        json!({"config": {
            "source": {"archive": {"archive_url": url}},
            "strategy": {"archive_strategy": {"runtime": "static"}},
        }})
    };
    // By default: refused at CreateBuild, naming the operator's switch.
    let strict = Server::start(
        &dir.path().join("strict"),
        &["--base-images", table.to_str().unwrap()],
    );
    let key = strict.tenant("acme", "pro");
    let a = strict.call("CreateBuild", Some(&key), &[], &config(&url).to_string());
    let said = String::from_utf8_lossy(&a.body).to_string();
    assert_eq!(a.status, 400, "{said}");
    assert!(said.contains("--allow-private-archive-urls"), "{said}");
    drop(strict);
    // Allowed: fetched, its pin checked.
    let open = Server::start(
        &dir.path().join("open"),
        &[
            "--base-images",
            table.to_str().unwrap(),
            "--allow-private-archive-urls",
        ],
    );
    let key = open.tenant("acme", "pro");
    let done = open.finished(&key, &config(&format!("{url}#sha256={sha}")));
    assert_eq!(done["state"], "BUILD_STATE_COMPLETED", "{done}");
    let image = download_and_check(&open, &key, done["buildId"].as_str().unwrap(), dir.path());
    let out = dir.path().join("fetched.ext4");
    std::fs::write(&out, image).unwrap();
    e2fsck(&out);
    assert_eq!(
        common::projects::debugfs_cat(&out, "/app/index.html"),
        "<h1>fetched</h1>\n"
    );
    let wrong = "0".repeat(64);
    let failed = open.finished(&key, &config(&format!("{url}#sha256={wrong}")));
    assert_eq!(failed["state"], "BUILD_STATE_FAILED", "{failed}");
    assert!(
        failed
            .to_string()
            .contains(&format!("not the {wrong} its URL pins")),
        "{failed}"
    );
    let _ = http.kill();
    let _ = http.wait();
}
