//! A real registry on loopback (Debian's `docker-registry`), optionally with
//! htpasswd auth, and a proxy in front of it that records requests and can
//! answer 503 a given number of times.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::run;

pub struct TestRegistry {
    child: Child,
    pub addr: String,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestRegistry {
    /// Starts a registry; with `auth`, it accepts only that user:password.
    pub fn start(auth: Option<(&str, &str)>) -> TestRegistry {
        TestRegistry::start_with(auth, None)
    }

    /// Starts a registry that trusts `tokens`' bearer tokens.
    pub fn start_with_tokens(tokens: &TokenServer) -> TestRegistry {
        TestRegistry::start_with(None, Some(tokens))
    }

    fn start_with(auth: Option<(&str, &str)>, tokens: Option<&TokenServer>) -> TestRegistry {
        TestRegistry::start_on("127.0.0.1", None, auth, tokens, None)
    }

    /// Starts a registry inside the network namespace `netns`, listening on
    /// `ip` there.
    pub fn start_in(netns: &TestHost) -> TestRegistry {
        TestRegistry::start_on(&netns.ip, Some(&netns.name), None, None, None)
    }

    /// Starts a registry serving HTTPS on `ip` with a certificate made for
    /// that address by a CA of the test's own; answers it and the CA's
    /// certificate (PEM), for clients to trust.
    pub fn start_tls(ip: &str) -> (TestRegistry, PathBuf) {
        let certs = tempfile::tempdir().unwrap().keep();
        let p = |name: &str| certs.join(name);
        let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(&certs).args(args));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=builderd-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=builderd-test-registry",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
        ]);
        std::fs::write(
            p("ext.cnf"),
            format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ]);
        let reg =
            TestRegistry::start_on(ip, None, None, None, Some((&p("cert.pem"), &p("key.pem"))));
        (reg, p("ca.pem"))
    }

    fn start_on(
        ip: &str,
        netns: Option<&str>,
        auth: Option<(&str, &str)>,
        tokens: Option<&TokenServer>,
        tls: Option<(&Path, &Path)>,
    ) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = free_port();
        let tls = tls.map_or(String::new(), |(cert, key)| {
            format!(
                ", tls: {{certificate: {}, key: {}}}",
                cert.display(),
                key.display()
            )
        });
        let mut config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {ip}:{port}{tls}}}\n",
            data.display()
        );
        if let Some((user, pass)) = auth {
            let htpasswd = dir.path().join("htpasswd");
            run(Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&htpasswd)
                .args([user, pass]));
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: test, path: {}}}}}\n",
                htpasswd.display()
            ));
        }
        if let Some(t) = tokens {
            config.push_str(&format!(
                "auth: {{token: {{realm: \"{}\", service: {TOKEN_SERVICE}, issuer: {TOKEN_ISSUER}, rootcertbundle: {}}}}}\n",
                t.realm,
                t.cert.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "docker-registry"]);
                c
            }
            None => Command::new("docker-registry"),
        };
        let child = cmd
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed");
        let addr = format!("{ip}:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TestRegistry {
            child,
            addr,
            data,
            _dir: dir,
        }
    }

    /// Pushes an OCI layout's image with skopeo.
    pub fn push(&self, layout: &Path, tag: &str, name: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.arg(format!("--dest-creds={c}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.addr));
        run(&mut cmd);
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.data.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy to a registry: records each request line; answers `fail_status`
/// (with Retry-After: 1) to the next `fail` requests whose path contains
/// `fail_on`; and, once, ends the answer to a request whose path contains
/// `cut_on` after `cut` bytes of its body (with `stall`, holds it open,
/// sending nothing more, until the client hangs up); waits `delay_ms` before
/// answering each blob request, and `slow_ms` more before answering one
/// whose path contains `slow_on`.
#[derive(Clone)]
pub struct Faults {
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    pub slow_ms: Arc<std::sync::atomic::AtomicU64>,
    pub slow_on: Arc<Mutex<String>>,
    pub fail: Arc<AtomicUsize>,
    pub fail_on: Arc<Mutex<String>>,
    pub fail_status: Arc<Mutex<String>>,
    pub cut: Arc<AtomicUsize>,
    pub cut_on: Arc<Mutex<String>>,
    pub stall: Arc<std::sync::atomic::AtomicBool>,
}

pub struct Proxy {
    pub addr: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub faults: Faults,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let faults = Faults {
            delay_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            slow_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            slow_on: Arc::new(Mutex::new(String::new())),
            fail: Arc::new(AtomicUsize::new(0)),
            fail_on: Arc::new(Mutex::new(String::new())),
            fail_status: Arc::new(Mutex::new("503 Service Unavailable".into())),
            cut: Arc::new(AtomicUsize::new(0)),
            cut_on: Arc::new(Mutex::new(String::new())),
            stall: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let (r, f, up) = (requests.clone(), faults.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (r, f, up) = (r.clone(), f.clone(), up.clone());
                std::thread::spawn(move || serve(conn, &up, &r, &f));
            }
        });
        Proxy {
            addr,
            requests,
            faults,
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// Reads an HTTP request head (up to the blank line).
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn serve(mut client: TcpStream, upstream: &str, requests: &Mutex<Vec<String>>, faults: &Faults) {
    // One request per connection: read its head, forward it with
    // `Connection: close`, copy the answer back until the registry closes.
    let Some(text) = read_head(&mut client) else {
        return;
    };
    let request_line = text.lines().next().unwrap_or_default().to_string();
    requests.lock().unwrap().push(request_line.clone());
    let pattern = faults.fail_on.lock().unwrap().clone();
    if request_line.contains(&pattern) && faults.fail.load(Ordering::SeqCst) > 0 {
        faults.fail.fetch_sub(1, Ordering::SeqCst);
        let status = faults.fail_status.lock().unwrap().clone();
        let _ = client.write_all(format!("HTTP/1.1 {status}\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        return;
    }
    let delay = faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 && request_line.contains("/blobs/") {
        std::thread::sleep(Duration::from_millis(delay));
    }
    let slow_on = faults.slow_on.lock().unwrap().clone();
    if !slow_on.is_empty() && request_line.contains(&slow_on) {
        std::thread::sleep(Duration::from_millis(faults.slow_ms.load(Ordering::SeqCst)));
    }
    let cut_pattern = faults.cut_on.lock().unwrap().clone();
    let cut = if !cut_pattern.is_empty() && request_line.contains(&cut_pattern) {
        faults.cut.swap(0, Ordering::SeqCst)
    } else {
        0
    };
    let rewritten: String = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        .trim_end()
        .to_string()
        + "\r\nConnection: close\r\n\r\n";
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    if up.write_all(rewritten.as_bytes()).is_err() {
        return;
    }
    if cut == 0 {
        let _ = std::io::copy(&mut up, &mut client);
        return;
    }
    // Forward the head and `cut` bytes of the body, then drop the connection.
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let Ok(n) = up.read(&mut buf) else { return };
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            if answer.len() >= end + 4 + cut {
                let _ = client.write_all(&answer[..end + 4 + cut]);
                if faults.stall.load(Ordering::SeqCst) {
                    // Until the client gives up: it sends nothing more.
                    let _ = client.read(&mut [0u8; 1]);
                }
                return;
            }
        }
    }
    let _ = client.write_all(&answer);
}

/// A token server for a registry configured with `auth: token`: it checks
/// basic credentials and issues RS256 JWTs (signed with the openssl CLI,
/// the signing certificate in `x5c`) granting pull and push.
pub struct TokenServer {
    pub realm: String,
    pub cert: PathBuf,
    pub requests: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

pub const TOKEN_SERVICE: &str = "builderd-test-registry";
pub const TOKEN_ISSUER: &str = "builderd-test-issuer";

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenServer {
    pub fn start(user: &str, password: &str) -> TokenServer {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let (key, cert, der) = (
            dir.path().join("key.pem"),
            dir.path().join("cert.pem"),
            dir.path().join("cert.der"),
        );
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=builderd-test-token",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null()));
        run(Command::new("openssl")
            .args(["x509", "-outform", "der", "-in"])
            .arg(&cert)
            .arg("-out")
            .arg(&der));
        let x5c = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&der).unwrap());
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let Some(text) = read_head(&mut conn) else {
                    continue;
                };
                let authorized = text.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:")
                        && l[14..].trim() == expected
                });
                if !authorized {
                    let _ = conn.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                // Grant what the scope asks for: repository:NAME:ACTIONS.
                let query = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .split_once('?')
                    .map(|(_, q)| q.to_string())
                    .unwrap_or_default();
                let access: Vec<serde_json::Value> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .map(|s| s.replace("%3A", ":").replace("%2F", "/").replace("%2C", ","))
                    .filter_map(|s| {
                        let mut parts = s.splitn(3, ':');
                        let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                    })
                    .collect();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
                let claims = serde_json::json!({"iss": TOKEN_ISSUER, "sub": "builder", "aud": TOKEN_SERVICE, "exp": now + 600, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", counter.load(Ordering::SeqCst)), "access": access});
                let signing_input = format!(
                    "{}.{}",
                    b64url(header.to_string().as_bytes()),
                    b64url(claims.to_string().as_bytes())
                );
                let mut sign = Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign"])
                    .arg(&key)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                sign.stdin
                    .take()
                    .unwrap()
                    .write_all(signing_input.as_bytes())
                    .unwrap();
                let signature = sign.wait_with_output().unwrap().stdout;
                let token = format!("{signing_input}.{}", b64url(&signature));
                let body = serde_json::json!({"token": token, "access_token": token}).to_string();
                let _ = conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
            }
        });
        TokenServer {
            realm,
            cert,
            requests,
            _dir: dir,
        }
    }
}

/// A test host: a network namespace of this test's own, joined to this one
/// by a veth pair, with an address of its own.
pub struct TestHost {
    pub name: String,
    pub ip: String,
    /// This namespace's end of the pair.
    outer: String,
}

impl TestHost {
    pub fn create() -> TestHost {
        let id = std::process::id() % 200 + 20;
        let name = format!("bdtest{}", std::process::id());
        let (outer, inner) = (format!("bdo{id}"), format!("bdi{id}"));
        let (host_ip, ns_ip) = (format!("10.231.{id}.1"), format!("10.231.{id}.2"));
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &inner,
        ]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &inner, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        TestHost {
            name,
            ip: ns_ip,
            outer,
        }
    }

    /// Gives the host `addr` too (one address, routed to it from here).
    pub fn add_address(&self, addr: &str) {
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        let inner = self.outer.replacen("bdo", "bdi", 1);
        let one = format!("{addr}/32");
        ip(&["-n", &self.name, "addr", "add", &one, "dev", &inner]);
        ip(&["route", "add", &one, "dev", &self.outer]);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Deleting the namespace removes its end of the veth pair, and so both.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
