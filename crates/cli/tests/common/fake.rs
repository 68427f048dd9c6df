//! Hosts of the tests' own for what a hostile tenant would point builderd
//! at: a listener that only counts connections, a small HTTP server whose
//! every answer the test writes (a registry serving only manifests and
//! configs, a redirect, a token realm), and extra addresses on `lo` (a
//! public-looking one stands in for the internet, as root).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Accepts connections and counts them; answers nothing.
pub struct Counter {
    pub addr: String,
    count: Arc<AtomicUsize>,
}

impl Counter {
    pub fn on(ip: &str) -> Counter {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                c.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Counter { addr, count }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
}

/// An answer: status line ("200 OK"), headers, body.
pub struct Reply {
    pub status: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A small HTTP/1.1 server whose answers `handler` writes; it keeps every
/// request it was sent.
pub struct Fake {
    pub addr: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    pub fn on(ip: &str, handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let r = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (h, r) = (handler.clone(), r.clone());
                std::thread::spawn(move || serve(conn, &*h, &r));
            }
        });
        Fake { addr, requests }
    }

    /// Requests whose path contains `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.contains(needle))
            .count()
    }

    pub fn seen(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(mut conn: TcpStream, handler: &Handler, requests: &Mutex<Vec<Request>>) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.lines();
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let path = first.next().unwrap_or_default().to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let req = Request {
            method,
            path,
            headers,
        };
        requests.lock().unwrap().push(req.clone());
        let reply = handler(&req);
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (n, v) in &reply.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if req.method != "HEAD" {
            bytes.extend_from_slice(&reply.body);
        }
        if conn.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// An OCI layout's image served the way a registry serves it: its tagged
/// manifest at /v2/NAME/manifests/TAG (or by digest), its blobs at
/// /v2/NAME/blobs/DIGEST, and 404 for anything else. `extra` answers first
/// (None: fall through).
pub fn registry_of(
    layout: &Path,
    extra: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static,
) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let layout = layout.to_path_buf();
    move |req: &Request| {
        if let Some(r) = extra(req) {
            return r;
        }
        if req.path == "/v2/" {
            return Reply::new("200 OK", "{}");
        }
        let blob = |digest: &str| -> Option<Vec<u8>> {
            std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(digest.strip_prefix("sha256:")?),
            )
            .ok()
        };
        if let Some((_, digest)) = req.path.split_once("/blobs/") {
            return match blob(digest) {
                Some(b) => Reply::new("200 OK", b),
                None => Reply::new("404 Not Found", r#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#),
            };
        }
        if let Some((_, reference)) = req.path.split_once("/manifests/") {
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
            let found = index["manifests"].as_array().unwrap().iter().find(|m| {
                m["digest"] == reference
                    || m["annotations"]["org.opencontainers.image.ref.name"] == reference
            });
            if let Some(m) = found {
                let digest = m["digest"].as_str().unwrap();
                return Reply::new("200 OK", blob(digest).unwrap())
                    .header("Content-Type", m["mediaType"].as_str().unwrap())
                    .header("Docker-Content-Digest", digest);
            }
        }
        Reply::new(
            "404 Not Found",
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#,
        )
    }
}

/// The sha256 digest of `bytes`, as "sha256:HEX".
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", super::server::sha256_hex(bytes))
}

/// Writes a blob into an OCI layout; answers its digest.
pub fn add_blob(layout: &Path, bytes: &[u8]) -> String {
    let d = digest(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
    d
}

/// Tags `manifest` (its bytes) as `tag` in an OCI layout's index.
pub fn tag_manifest(layout: &Path, tag: &str, manifest: &[u8]) {
    let d = add_blob(layout, manifest);
    let path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    std::fs::write(&path, index.to_string()).unwrap();
}

/// The manifest tagged `tag` in an OCI layout, parsed, with its path.
pub fn manifest_of(layout: &Path, tag: &str) -> (serde_json::Value, PathBuf) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let path = layout
        .join("blobs/sha256")
        .join(&m["digest"].as_str().unwrap()[7..]);
    (
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap(),
        path,
    )
}

/// An address of this machine's, added to `lo` for the test (as root) and
/// removed when dropped.
pub struct LocalAddress {
    pub ip: String,
}

impl LocalAddress {
    /// `prefix` and a last octet of this process's own, so that test
    /// binaries running at once do not collide; `n` tells apart addresses
    /// within one process.
    pub fn add(prefix: &str, n: u32) -> LocalAddress {
        let ip = format!("{prefix}.{}", (std::process::id() * 7 + n) % 250 + 2);
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
            .output();
        super::run(Command::new("ip").args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]));
        LocalAddress { ip }
    }
}

impl Drop for LocalAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.ip), "dev", "lo"])
            .output();
    }
}
