//! Real Git servers on loopback, for the tests' own repositories: `git
//! http-backend` (smart HTTP, protocol v2) behind a small HTTP server that
//! asks for basic auth, `git daemon`, and `sshd` with a key of the test's.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use super::server::free_port;

/// One request the HTTP server answered.
#[derive(Clone, Debug)]
pub struct Served {
    pub path: String,
    pub status: u16,
    /// Whether it came with an Authorization header.
    pub authorized: bool,
    /// Bytes of the answer's body.
    pub bytes: usize,
}

/// `git http-backend` over HTTP on 127.0.0.1, serving the bare
/// repositories under `root` (`http://ADDR/NAME.git`).
pub struct GitHttp {
    pub addr: String,
    pub served: Arc<Mutex<Vec<Served>>>,
}

impl GitHttp {
    /// `login`: the user and password every request must carry.
    pub fn start(root: &Path, login: Option<(&str, &str)>) -> GitHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = Arc::new(Mutex::new(Vec::new()));
        let expected = login.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let (root, s) = (root.to_path_buf(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, s, expected) = (root.clone(), s.clone(), expected.clone());
                std::thread::spawn(move || {
                    let _ = answer(conn, &root, expected.as_deref(), &s);
                });
            }
        });
        GitHttp { addr, served }
    }

    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    /// Bytes of every answer so far.
    pub fn bytes(&self) -> usize {
        self.served().iter().map(|s| s.bytes).sum()
    }
}

fn answer(
    conn: TcpStream,
    root: &Path,
    expected: Option<&str>,
    served: &Mutex<Vec<Served>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        reader
            .by_ref()
            .take(len.parse().unwrap_or(0))
            .read_to_end(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let authorized = header("authorization");
    let mut conn = conn;
    if let Some(expected) = expected {
        if authorized.as_deref() != Some(expected) {
            served.lock().unwrap().push(Served {
                path: path.to_string(),
                status: 401,
                authorized: authorized.is_some(),
                bytes: 0,
            });
            return conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &method)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REMOTE_USER", "test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(p) = header("git-protocol") {
        cgi.env("GIT_PROTOCOL", p);
    }
    if let Some(e) = header("content-encoding") {
        cgi.env("HTTP_CONTENT_ENCODING", e);
    }
    let mut child = cgi.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        })
        .unwrap_or((out.stdout.len(), 0));
    let head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
    let payload = &out.stdout[(split.0 + split.1).min(out.stdout.len())..];
    let mut status = "200 OK".to_string();
    let mut reply = String::new();
    for h in head.lines() {
        match h.split_once(':') {
            Some((n, v)) if n.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => reply.push_str(&format!("{h}\r\n")),
            None => {}
        }
    }
    served.lock().unwrap().push(Served {
        path: path.to_string(),
        status: status[..3].parse().unwrap_or(0),
        authorized: authorized.is_some(),
        bytes: payload.len(),
    });
    let head = format!(
        "HTTP/1.1 {status}\r\n{reply}Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(payload)
}

/// `git daemon` on 127.0.0.1, exporting every repository under `root`
/// (`git://ADDR/NAME.git`).
pub struct GitDaemon {
    pub addr: String,
    child: Child,
}

impl GitDaemon {
    pub fn start(root: &Path) -> GitDaemon {
        let port = free_port();
        let child = Command::new("git")
            .arg("daemon")
            .arg("--export-all")
            .arg(format!("--base-path={}", root.display()))
            .args(["--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(root)
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        wait_for(&addr);
        GitDaemon { addr, child }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        end_group(&mut self.child);
    }
}

/// `sshd` on 127.0.0.1 that lets in root with the test's key.
pub struct Sshd {
    pub addr: String,
    pub port: u16,
    /// The client's private key, and a known_hosts line for this server.
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    child: Child,
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        std::fs::create_dir_all(dir).unwrap();
        let host_key = dir.join("host_key");
        let key = dir.join("client_key");
        for k in [&host_key, &key] {
            let o = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(k)
                .output()
                .unwrap();
            assert!(o.status.success(), "ssh-keygen: {o:?}");
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized).unwrap();
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PidFile {}\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("sshd (Debian: openssh-server)");
        let addr = format!("127.0.0.1:{port}");
        wait_for(&addr);
        let host_pub = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}")).unwrap();
        Sshd {
            addr,
            port,
            key,
            known_hosts,
            child,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        end_group(&mut self.child);
    }
}

/// Kills `child`'s process group: `git daemon` runs the daemon as a child
/// of its own, and sshd one per connection.
fn end_group(child: &mut Child) {
    // SAFETY: a plain kill(2) of the group the child leads.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

fn wait_for(addr: &str) {
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing listens on {addr}");
}
