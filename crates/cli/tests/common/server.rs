//! A real `builderd serve` process on loopback, and curl as its client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::e2fsck;
use super::images::make_image;
use super::registry::TestRegistry;

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    port: u16,
    args: Vec<String>,
    /// Where the server's stderr goes (None: the test's).
    log: Option<PathBuf>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP answer: status, headers (lower-case names) and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Server {
    /// Starts `builderd serve` on a free port with `data` as its data
    /// directory, and waits for /healthz. Its builds may pull from the
    /// tests' registries on loopback (`--allow-private-registries`).
    pub fn start(data: &Path, args: &[&str]) -> Server {
        Server::launch(data, args, None, true)
    }

    /// As `start`, with the server's stderr appended to `log`.
    pub fn start_logged(data: &Path, args: &[&str], log: &Path) -> Server {
        Server::launch(data, args, Some(log), true)
    }

    /// As `start`, with the default outbound policy: public registries only.
    pub fn start_public_only(data: &Path, args: &[&str]) -> Server {
        Server::launch(data, args, None, false)
    }

    fn launch(data: &Path, args: &[&str], log: Option<&Path>, private_registries: bool) -> Server {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if private_registries {
            args.push("--allow-private-registries".into());
        }
        let mut s = Server {
            child: None,
            url: String::new(),
            data: data.to_path_buf(),
            port: free_port(),
            args,
            log: log.map(Path::to_path_buf),
        };
        s.restart();
        s
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server still runs");
        let listen = format!("127.0.0.1:{}", self.port);
        let child = super::builderd()
            .arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(match &self.log {
                Some(log) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(log)
                        .unwrap(),
                ),
                None => Stdio::inherit(),
            })
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.url = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &format!("{}/healthz", self.url)])
                .status()
                .unwrap()
                .success();
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the server did not get ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the server runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the server runs");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `builderd tenant create NAME --tier TIER`: the key.
    pub fn tenant(&self, name: &str, tier: &str) -> String {
        let out = super::builderd()
            .args(["tenant", "create", name, "--tier", tier, "--data-dir"])
            .arg(&self.data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.lines().last().unwrap().to_string()
    }

    /// curl with `extra` arguments against `path`.
    pub fn curl(&self, path: &str, extra: &[&str]) -> Answer {
        let dir = tempfile::tempdir().unwrap();
        let (head, body) = (dir.path().join("head"), dir.path().join("body"));
        let out = Command::new("curl")
            .args(["-s", "-D"])
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(extra)
            .arg(format!("{}{path}", self.url))
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {path} failed: {out:?}");
        let head = std::fs::read_to_string(&head).unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            status,
            headers,
            body: std::fs::read(&body).unwrap_or_default(),
        }
    }

    /// A Connect unary call with a JSON body, as curl sends it (no
    /// Connect-Protocol-Version header).
    pub fn call(&self, method: &str, key: Option<&str>, headers: &[&str], body: &str) -> Answer {
        let auth = key.map(|k| format!("Authorization: Bearer {k}"));
        let mut extra = vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ];
        if let Some(a) = &auth {
            extra.extend(["-H", a.as_str()]);
        }
        for h in headers {
            extra.extend(["-H", h]);
        }
        self.curl(&format!("/builder.v1.BuilderService/{method}"), &extra)
    }

    /// A call that must succeed; its JSON answer.
    pub fn ok(&self, method: &str, key: &str, body: &str) -> Value {
        let a = self.call(method, Some(key), &[], body);
        assert_eq!(
            a.status,
            200,
            "{method}: {}",
            String::from_utf8_lossy(&a.body)
        );
        a.json()
    }

    pub fn create(&self, key: &str, config: &Value) -> String {
        let v = self.ok("CreateBuild", key, &config.to_string());
        v["buildId"].as_str().unwrap().to_string()
    }

    pub fn status(&self, key: &str, id: &str) -> Value {
        self.ok("GetBuildStatus", key, &format!(r#"{{"build_id":"{id}"}}"#))
    }

    /// Polls until the build reaches one of `states` (BUILD_STATE_ names).
    /// Creates a build and waits (3 minutes at most) for it to complete
    /// or fail; answers its status.
    pub fn finished(&self, key: &str, config: &Value) -> Value {
        let id = self.create(key, config);
        self.wait_for(
            key,
            &id,
            &["BUILD_STATE_COMPLETED", "BUILD_STATE_FAILED"],
            Duration::from_secs(180),
        )
    }

    pub fn wait_for(&self, key: &str, id: &str, states: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status(key, id);
            if states.contains(&s["state"].as_str().unwrap_or_default()) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "build {id} did not reach {states:?}: {s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A small image (busybox, a file per layer) pushed as NAME:v1.
pub fn push_app(reg: &TestRegistry, dir: &Path, name: &str, big: Option<u64>) {
    let layout = dir.join(format!("layout-{name}"));
    let mut top = vec![json!({"name": "etc/app.conf", "data": format!("name={name}\n")})];
    if let Some(size) = big {
        top.push(json!({"name": "data/blob", "size": size}));
    }
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [
            {"entries": [{"name": "bin", "type": "dir"},
                         {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
                         {"name": "bin/sh", "type": "symlink", "link": "busybox"}]},
            {"entries": top},
        ], "config": {"Entrypoint": ["/bin/sh", "-c", "cat /etc/app.conf"]}}),
    );
    reg.push(&layout, "v1", &format!("{name}:v1"), None);
}

pub fn config(image: &str) -> Value {
    json!({"config": {
        "source": {"docker_image": {"image_uri": image}},
        "target": {"microvm_rootfs": {"format": "ext4", "init_strategy": "INIT_STRATEGY_DIRECT_EXEC"}},
        "strategy": {"docker_strategy": {"optimize_for_size": false, "remove_dev_packages": false, "preserve_layers": false}}
    }})
}

/// A proto3 JSON integer: absent when zero, a string when 64-bit.
pub fn num(v: &Value) -> i64 {
    match v {
        Value::Null => 0,
        Value::String(s) => s.parse().unwrap(),
        v => v.as_i64().unwrap(),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Downloads a completed build's image by the plain GET form, checks it
/// with e2fsck and against the sha256 its status records.
pub fn download_and_check(server: &Server, key: &str, id: &str, dir: &Path) -> Vec<u8> {
    let status = server.status(key, id);
    let a = server.curl(
        &format!("/builder.v1.BuilderService/GetBuildArtifact/{id}"),
        &["-H", &format!("Authorization: Bearer {key}")],
    );
    assert_eq!(a.status, 200);
    let sha = status["artifact"]["sha256"].as_str().unwrap();
    assert_eq!(sha256_hex(&a.body), sha);
    assert_eq!(a.header("etag"), Some(format!("\"sha256:{sha}\"").as_str()));
    assert_eq!(
        a.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        a.body.len()
    );
    let file = dir.join(format!("{id}.ext4"));
    std::fs::write(&file, &a.body).unwrap();
    e2fsck(&file);
    a.body
}

/// `builderd client logs ID`: the build's log lines.
pub fn logs(server: &Server, key: &str, id: &str) -> String {
    let out = super::run(super::builderd().args([
        "client",
        "--server",
        &server.url,
        "--key",
        key,
        "logs",
        id,
    ]));
    String::from_utf8(out.stdout).unwrap()
}

/// The clients' directory: connect_client.mjs, the Python clients, node_modules.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The set-up's Python (grpcio, prometheus-client) running `script` from
/// the clients' directory.
pub fn python_client(script: &str) -> Command {
    let mut cmd = Command::new(test_python());
    cmd.arg(clients_dir().join(script));
    cmd
}

fn test_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-clients/venv/bin/python")
}

/// The repository's proto/ directory.
pub fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

/// builder.v1's Python gRPC stubs, generated by grpcio-tools into `dir`.
pub fn python_stubs(dir: &Path) -> PathBuf {
    let gen = dir.join("pygen");
    std::fs::create_dir_all(&gen).unwrap();
    super::run(
        Command::new(test_python())
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(proto_dir())
            .arg(format!("--python_out={}", gen.display()))
            .arg(format!("--grpc_python_out={}", gen.display()))
            .arg("builder/v1/builder.proto"),
    );
    gen
}
