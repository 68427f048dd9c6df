//! Package indexes on a test host of their own, at a public address
//! (198.51.100.10, TEST-NET-2, routed to it from here) so that build steps
//! on the egress network reach them: verdaccio for npm and pypiserver for
//! pip, with packages the tests publish. Both come from `scripts/setup`
//! (the test clients' npm prefix and Python venv).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use super::registry::TestHost;

pub const INDEX_ADDRESS: &str = "198.51.100.10";
const NPM_PORT: u16 = 4873;
const PYPI_PORT: u16 = 8081;

pub struct PackageIndex {
    host: TestHost,
    servers: Vec<Child>,
    wheels: PathBuf,
    npm_token: String,
    dir: PathBuf,
}

fn tool(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}

impl PackageIndex {
    pub fn start(dir: &Path) -> PackageIndex {
        let dir = dir.join("package-index");
        let wheels = dir.join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        let host = TestHost::create();
        host.add_address(INDEX_ADDRESS);
        let config = dir.join("verdaccio.yaml");
        std::fs::write(
            &config,
            format!(
                "storage: {storage}\nauth:\n  htpasswd:\n    file: {htpasswd}\n    max_users: 10\n\
                 uplinks: {{}}\npackages:\n  '**':\n    access: $all\n    publish: $authenticated\n\
                 log: {{type: stdout, format: pretty, level: warn}}\n",
                storage = dir.join("npm").display(),
                htpasswd = dir.join("htpasswd").display(),
            ),
        )
        .unwrap();
        let in_host = |program: &Path| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &host.name])
                .arg(program)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        let npm = in_host(&tool("tests/clients/node_modules/.bin/verdaccio"))
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("0.0.0.0:{NPM_PORT}"))
            .spawn()
            .unwrap();
        let pypi = in_host(&tool("../../target/test-clients/venv/bin/pypi-server"))
            .args(["run", "-i", "0.0.0.0", "-p", &PYPI_PORT.to_string()])
            .arg(&wheels)
            .spawn()
            .unwrap();
        let mut index = PackageIndex {
            host,
            servers: vec![npm, pypi],
            wheels,
            npm_token: String::new(),
            dir,
        };
        index.wait_for(&format!("http://{}:{NPM_PORT}/-/ping", index.host.ip));
        index.wait_for(&format!("http://{}:{PYPI_PORT}/simple/", index.host.ip));
        // A user to publish as (verdaccio's htpasswd sign-up).
        let answer = curl(&[
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"name": "tester", "password": "tester-password"}"#,
            &format!(
                "http://{}:{NPM_PORT}/-/user/org.couchdb.user:tester",
                index.host.ip
            ),
        ]);
        let answer: Value = serde_json::from_str(&answer).unwrap();
        index.npm_token = answer["token"].as_str().expect("a token").to_string();
        index
    }

    fn wait_for(&self, url: &str) {
        for _ in 0..300 {
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", url])
                .status()
                .unwrap()
                .success();
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{url} did not answer");
    }

    /// The build args that point a generated Containerfile's package
    /// managers here.
    pub fn build_args(&self) -> Vec<String> {
        vec![
            format!("NPM_CONFIG_REGISTRY=http://{INDEX_ADDRESS}:{NPM_PORT}/"),
            format!("PIP_INDEX_URL=http://{INDEX_ADDRESS}:{PYPI_PORT}/simple/"),
            format!("PIP_TRUSTED_HOST={INDEX_ADDRESS}"),
        ]
    }

    /// Publishes the npm package `name@version` with `files` (its
    /// package.json is written here).
    pub fn publish_npm(&self, name: &str, version: &str, files: &[(&str, &str)]) {
        let package = self.dir.join(format!("npm-{name}-{version}"));
        std::fs::create_dir_all(&package).unwrap();
        std::fs::write(
            package.join("package.json"),
            json!({"name": name, "version": version, "main": "index.js", "license": "MIT"})
                .to_string(),
        )
        .unwrap();
        for (path, text) in files {
            let path = package.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let registry = format!("//{}:{NPM_PORT}/", self.host.ip);
        let o = Command::new("npm")
            .current_dir(&package)
            .args(["publish", "--loglevel=error", "--registry"])
            .arg(format!("http:{registry}"))
            .arg(format!("--{registry}:_authToken={}", self.npm_token))
            .env("npm_config_cache", self.dir.join("npm-cache"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "npm publish {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// builderd-greeting 1.0.0 for npm and PyPI: `hello WHO from
    /// builderd-greeting` (Node) and `hello WHO from builderd_greeting`.
    pub fn publish_greetings(&self) {
        self.publish_npm(
            "builderd-greeting",
            "1.0.0",
            &[(
                "index.js",
                "module.exports = (who) => `hello ${who} from builderd-greeting`;\n",
            )],
        );
        self.add_wheel(
            "builderd-greeting",
            "1.0.0",
            "builderd_greeting",
            "def hello(who):\n    return f'hello {who} from builderd_greeting'\n",
        );
    }

    /// A base-image table beside the index's files giving `base` for Node
    /// 18 and Python 3.11 (and as their default); answers its path.
    pub fn base_images(&self, base: &str) -> std::path::PathBuf {
        let table = self.dir.join("base-images.json");
        std::fs::write(
            &table,
            serde_json::json!({"node": {"18": base, "default": base},
                   "python": {"3.11": base, "default": base}})
            .to_string(),
        )
        .unwrap();
        table
    }

    /// `builderd build` options for a project installing from this index:
    /// the step engine's storage `steps`, the base-image table `table`,
    /// egress, and the index's build args.
    pub fn build_options(&self, steps: &Path, table: &Path) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--steps-dir".into(),
            steps.display().to_string(),
            "--base-images".into(),
            table.display().to_string(),
            "--network".into(),
            "egress".into(),
        ];
        for arg in self.build_args() {
            args.extend(["--build-arg".to_string(), arg]);
        }
        args
    }

    /// Adds the wheel of the Python module `module` (`name` `version`).
    pub fn add_wheel(&self, name: &str, version: &str, module: &str, text: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mkwheel.py");
        let o = Command::new("python3")
            .arg(script)
            .args([name, version, module])
            .arg(&self.wheels)
            .arg(text)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

fn curl(args: &[&str]) -> String {
    let o = Command::new("curl").arg("-sf").args(args).output().unwrap();
    assert!(o.status.success(), "curl {args:?} failed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Drop for PackageIndex {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}
