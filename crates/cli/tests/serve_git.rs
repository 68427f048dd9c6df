//! `builderd serve` building `git_repository` sources: a repository the
//! test makes, served by `git http-backend` behind a token on loopback
//! (`--allow-private-git`), built by its Containerfile with buildah; the
//! token and the build secret sealed in the database, never in it or the
//! logs in plain text; the layer cache and artifact cache kept per tenant
//! (an artifact keyed by the commit); clone failures
//! FAILED as the source's, not retried.
//! Needs root, buildah, runc and git.

mod common;

use std::path::Path;

use common::git_servers::GitHttp;
use common::projects::{base_image, debugfs_cat, make_repos};
use common::registry::TestRegistry;
use common::server::{download_and_check, logs, Server};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "tok-service-9b2f61";
const SECRET: &str = "build-secret-5e03aa";

fn git_config(url: &str, reference: &str, token: &str) -> Value {
    json!({"config": {
        "source": {"git_repository": {"clone_url": url, "ref": reference, "auth": {"token": token}}},
        "target": {"microvm_rootfs": {"format": "ext4", "init_strategy": "INIT_STRATEGY_DIRECT_EXEC"}},
        "strategy": {"git_strategy": {"build_system": "docker",
            "build_args": {"COMMIT": "{{.GitCommit}}", "TAG": "{{.BuildID}}"},
            "secrets": {"unused": SECRET}}},
        "retry_policy": {"max_retries": 2, "base_delay": "1s", "max_delay": "1s"}}})
}

/// Whether any file of the data directory's database holds `needle`.
fn database_holds(data: &Path, needle: &str) -> bool {
    std::fs::read_dir(data).unwrap().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.contains(".db")
            && std::fs::read(e.path())
                .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
    })
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_git_repository_is_fetched_built_and_served_with_its_secrets_sealed() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let repos = make_repos(dir.path(), &base);
    let git = GitHttp::start(&repos.srv, Some(("x-access-token", TOKEN)));
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--allow-private-git"]);
    let key = server.tenant("acme", "pro");
    let url = format!("http://{}/app.git", git.addr);

    let done = server.finished(&key, &git_config(&url, "v1", TOKEN));
    assert_eq!(done["state"], "BUILD_STATE_COMPLETED", "{done}");
    let id = done["buildId"].as_str().unwrap();
    download_and_check(&server, &key, id, dir.path());
    let file = dir.path().join(format!("{id}.ext4"));
    assert_eq!(debugfs_cat(&file, "/app/app.txt"), "one\n");
    assert_eq!(
        debugfs_cat(&file, "/app/vendor/lib/lib.txt"),
        "library one\n"
    );
    assert_eq!(debugfs_cat(&file, "/app/commit"), format!("{}\n", repos.v1));
    assert_eq!(debugfs_cat(&file, "/app/tag"), format!("{id}\n"));
    let meta: Value =
        serde_json::from_str(done["artifact"]["metadataJson"].as_str().unwrap()).unwrap();
    assert_eq!(meta["source_commit"], repos.v1.as_str());
    // The build's log has the fetch and each instruction of the build.
    let log = logs(&server, &key, id);
    for needle in ["checked out", "STEP 1/", "COPY . /app"] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    // The token and the secret: in no log, not in the database in plain
    // text, not shown back.
    for plain in [TOKEN, SECRET] {
        assert!(!log.contains(plain));
        assert!(!database_holds(&data, plain), "the database holds {plain}");
        assert!(!done.to_string().contains(plain));
    }

    // The layer cache is the tenant's own: acme's second cached build of
    // v1 reuses what its first one committed; another tenant's identical
    // build does not.
    let mut cached = git_config(&url, "v1", TOKEN);
    cached["config"]["strategy"]["git_strategy"]["cache_dependencies"] = json!(true);
    let other = server.tenant("globex", "pro");
    for (who, reused) in [(&key, false), (&key, true), (&other, false)] {
        let done = server.finished(who, &cached);
        assert_eq!(done["state"], "BUILD_STATE_COMPLETED", "{done}");
        let log = logs(&server, who, done["buildId"].as_str().unwrap());
        assert_eq!(log.contains("Using cache"), reused, "{log}");
    }

    // The artifact cache: the same commit, args and Containerfile again
    // (by another ref naming the same commit) is served from it, for the
    // same tenant only. (The builds above differ by their {{.BuildID}}.)
    let same = |reference: &str| {
        let mut config = git_config(&url, reference, TOKEN);
        config["config"]["strategy"]["git_strategy"]["build_args"] =
            json!({"COMMIT": "{{.GitCommit}}"});
        config
    };
    let first = server.finished(&key, &same("v1"));
    let again = server.finished(&key, &same(&repos.v1));
    let other_tenant = server.finished(&other, &same("v1"));
    for done in [&first, &again, &other_tenant] {
        assert_eq!(done["state"], "BUILD_STATE_COMPLETED", "{done}");
    }
    assert_ne!(first["cacheHit"], true, "{first}");
    assert_eq!(again["cacheHit"], true, "{again}");
    assert_ne!(other_tenant["cacheHit"], true, "{other_tenant}");
    assert_eq!(
        again["artifact"]["sha256"], first["artifact"]["sha256"],
        "{again}"
    );
    let log = logs(&server, &key, again["buildId"].as_str().unwrap());
    assert!(!log.contains("STEP 2/"), "built again:\n{log}");

    // A wrong token, a missing repository: FAILED, the source's fault,
    // not tried again.
    for (config, expected) in [
        (git_config(&url, "v1", "wrong"), "refused the credentials"),
        (
            git_config(&format!("http://{}/missing.git", git.addr), "", TOKEN),
            "does not exist",
        ),
        (git_config(&url, "no-such-branch", TOKEN), "no-such-branch"),
    ] {
        let failed = server.finished(&key, &config);
        assert_eq!(failed["state"], "BUILD_STATE_FAILED", "{failed}");
        assert_eq!(failed["error"]["category"], "ERROR_CATEGORY_SOURCE");
        let message = failed["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
        assert!(
            failed["retries"].as_array().is_none_or(|a| a.is_empty()),
            "retried: {failed}"
        );
    }

    // A server that cannot be reached: a network error, tried again as the
    // build's policy says (twice), then FAILED.
    let nobody = format!("http://127.0.0.1:{}/app.git", common::server::free_port());
    let failed = server.finished(&key, &git_config(&nobody, "", TOKEN));
    assert_eq!(failed["state"], "BUILD_STATE_FAILED", "{failed}");
    assert_eq!(failed["error"]["category"], "ERROR_CATEGORY_SOURCE");
    let retries = failed["retries"].as_array().expect("retries");
    assert_eq!(retries.len(), 2, "{failed}");
    assert!(
        retries.iter().all(|r| r["cause"] == "NETWORK_ERROR"),
        "{failed}"
    );

    // A source the operator's policy forbids is refused at CreateBuild.
    let strict = Server::start(&dir.path().join("strict"), &[]);
    let key = strict.tenant("acme", "pro");
    let answer = strict.call(
        "CreateBuild",
        Some(&key),
        &[],
        &git_config(&url, "v1", TOKEN).to_string(),
    );
    let body = answer.json();
    assert_eq!(body["code"], "invalid_argument", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--allow-private-git"),
        "{body}"
    );
}
