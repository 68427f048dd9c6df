//! `builderd serve` running the docker strategy's `custom_commands`: the
//! original service's Node.js example on an image the test makes (busybox,
//! with `npm` a script that does what the two commands would), a real
//! registry on loopback, buildah and runc. Needs root.

mod common;

use std::path::Path;

use common::images::make_image;
use common::registry::TestRegistry;
use common::server::{download_and_check, logs, Server};
use common::*;
use serde_json::{json, Value};

/// `npm ci` installs a module; `npm cache clean` empties the cache the
/// image came with.
const NPM: &str = r#"#!/bin/sh
case "$1 $2" in
"ci --only=production")
    mkdir -p node_modules/left-pad
    echo 'module.exports = (s, n) => s.padStart(n);' > node_modules/left-pad/index.js
    echo "added 1 package in 0.1s" ;;
"cache clean")
    rm -rf /root/.npm/_cacache
    echo "npm cache cleaned" ;;
*)
    echo "npm: unknown command: $*" >&2; exit 1 ;;
esac
"#;

/// A Node.js-like app image, pushed as node-app:v1.
fn push_node_app(reg: &TestRegistry, dir: &Path) {
    let layout = dir.join("layout-node");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [
            {"entries": [{"name": "bin", "type": "dir"},
                         {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
                         {"name": "bin/sh", "type": "symlink", "link": "busybox"},
                         {"name": "usr/local/bin/npm", "data": NPM, "mode": 0o755}]},
            {"entries": [{"name": "app/package.json", "data": "{\"name\": \"app\", \"dependencies\": {\"left-pad\": \"1.3.0\"}}\n"},
                         {"name": "root/.npm/_cacache/index", "data": "cached tarballs\n"}]},
        ], "config": {"Env": ["PATH=/usr/local/bin:/bin"], "WorkingDir": "/app",
                      "Cmd": ["/bin/sh", "-c", "ls node_modules"]}}),
    );
    reg.push(&layout, "v1", "node-app:v1", None);
}

/// The original service's "Simple Node.js Application" example, as
/// written (its image and commands given).
fn node_example(image: &str, commands: &[&str]) -> Value {
    json!({"config": {"source": {"docker_image": {"image_uri": image}},
        "target": {"microvm_rootfs": {"format": "ext4", "init_strategy": "INIT_STRATEGY_DIRECT_EXEC"}},
        "strategy": {"docker_strategy": {"optimize_for_size": true, "remove_dev_packages": false,
          "custom_commands": commands}}}})
}

fn metadata(status: &Value) -> Value {
    serde_json::from_str(status["artifact"]["metadataJson"].as_str().unwrap()).unwrap()
}

fn debugfs(image: &Path, request: &str) -> String {
    let o = std::process::Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const SEED_COMMANDS: [&str; 2] = ["npm ci --only=production", "npm cache clean --force"];

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn the_node_example_runs_its_commands_with_the_tiers_network_and_caches_per_tenant() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_node_app(&reg, dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let pro = server.tenant("acme", "pro");
    let image = format!("{}/node-app:v1", reg.addr);
    let seed = node_example(&image, &SEED_COMMANDS);

    let first = server.finished(&pro, &seed);
    assert_eq!(first["state"], "BUILD_STATE_COMPLETED", "{first}");
    assert_ne!(first["cacheHit"], true);
    let id = first["buildId"].as_str().unwrap();
    download_and_check(&server, &pro, id, dir.path());
    let file = dir.path().join(format!("{id}.ext4"));
    assert_eq!(
        debugfs(&file, "cat /app/node_modules/left-pad/index.js"),
        "module.exports = (s, n) => s.padStart(n);\n"
    );
    assert!(
        debugfs(&file, "stat /root/.npm/_cacache").is_empty(),
        "the cache the second command removed is in the image"
    );
    // Each command's output is in the build's log, after its command.
    let log = logs(&server, &pro, id);
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the log:\n{log}"))
    };
    assert!(at("npm ci --only=production") < at("added 1 package in 0.1s"));
    assert!(at("npm cache clean --force") < at("npm cache cleaned"));
    let policy = &metadata(&first)["policy"];
    assert_eq!(
        (&policy["optimize_for_size"], &policy["harden"]),
        (&json!(true), &json!(true)),
        "{policy}"
    );
    let steps = &metadata(&first)["steps"];
    assert_eq!(steps["network"], "egress", "pro: egress");
    let codes: Vec<(String, i64)> = steps["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["command"].as_str().unwrap().to_string(),
                c["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [(SEED_COMMANDS[0].into(), 0), (SEED_COMMANDS[1].into(), 0)]
    );

    // The same list is a hit; a changed list a miss.
    let again = server.finished(&pro, &seed);
    assert_eq!(again["cacheHit"], true, "{again}");
    assert_eq!(again["artifact"]["sha256"], first["artifact"]["sha256"]);
    let changed = server.finished(
        &pro,
        &node_example(&image, &[SEED_COMMANDS[0], "echo extra > /app/extra"]),
    );
    assert_eq!(changed["state"], "BUILD_STATE_COMPLETED", "{changed}");
    assert_ne!(changed["cacheHit"], true, "{changed}");

    // Another tenant's identical build gets nothing of the first's: not its
    // artifact, not its engine storage; a free tenant's steps have no network.
    let free = server.tenant("globex", "free");
    let theirs = server.finished(&free, &seed);
    assert_eq!(theirs["state"], "BUILD_STATE_COMPLETED", "{theirs}");
    assert_ne!(theirs["cacheHit"], true, "{theirs}");
    assert_eq!(metadata(&theirs)["steps"]["network"], "none");
    for tenant in ["acme", "globex"] {
        assert!(
            data.join("steps").join(tenant).join("storage").is_dir(),
            "no engine storage of {tenant}'s own"
        );
    }
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_failing_command_fails_the_build_naming_it_and_its_exit_code() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_node_app(&reg, dir.path());
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("acme", "free");
    let image = format!("{}/node-app:v1", reg.addr);
    let failed = server.finished(
        &key,
        &node_example(&image, &["npm ci --only=production", "npm run build"]),
    );
    assert_eq!(failed["state"], "BUILD_STATE_FAILED", "{failed}");
    assert_eq!(
        failed["error"]["category"], "ERROR_CATEGORY_BUILD",
        "{failed}"
    );
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("build step 2 failed with exit code 1: npm run build"),
        "{message}"
    );
    // The last lines are the command's own (not the engine's).
    assert!(
        message.ends_with("last output:\nnpm: unknown command: run build"),
        "{message}"
    );
}
