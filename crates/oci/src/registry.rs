//! A client for the OCI distribution API: manifests and blobs, anonymous,
//! basic and bearer-token auth, retries with backoff for transient failures,
//! and blob downloads that resume where they stopped and are verified before
//! they are kept.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use builderd_net::Outbound;

use crate::digest::hex;
use crate::retry::{RetryCause, RetryNotice, RetryPolicy};
use crate::{Digest, Error, ImageRef, MAX_DOC};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

/// A registry client; `'a` bounds what hears of its retries.
pub struct Registry<'a> {
    client: Client,
    /// What may be connected to (the client's resolver and redirect policy
    /// apply it to names; addresses written in URLs are checked here).
    outbound: Outbound,
    /// `http://host:port` or `https://host`.
    base: String,
    host: String,
    repository: String,
    credentials: Option<Credentials>,
    /// The Authorization header that worked, reused for later requests.
    auth: Mutex<Option<String>>,
    retry: RetryPolicy,
    /// The client's wait for each read, where known (to say so when it runs out).
    stall: Option<Duration>,
    on_retry: Box<dyn Fn(&RetryNotice) + Send + Sync + 'a>,
}

/// Loopback registries may speak plain HTTP, as Docker allows.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Credentials for `registry` from `~/.docker/config.json` (`auths` entries;
/// credential helpers are not consulted).
pub fn docker_config_credentials(registry: &str) -> Option<Credentials> {
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(|d| Path::new(&d).join("config.json"))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json")))?;
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let keys: Vec<String> = if registry == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ]
    } else {
        vec![
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    };
    let entry = keys.iter().find_map(|k| auths.get(k))?;
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .ok()?;
        let (user, pass) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        return Some(Credentials {
            username: user.into(),
            password: pass.into(),
        });
    }
    Some(Credentials {
        username: entry.get("username")?.as_str()?.into(),
        password: entry.get("password")?.as_str()?.into(),
    })
}

/// `Bearer realm="x",service="y"` → ("bearer", {realm: x, service: y}).
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (quoted.to_string(), ""),
            },
            None => match after.split_once(',') {
                Some((v, n)) => (v.to_string(), n),
                None => (after.to_string(), ""),
            },
        };
        params.push((key.trim().to_ascii_lowercase(), value));
        rest = next.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

/// A reqwest error with its causes ("error sending request" alone does not
/// say that the connection was refused).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
        source = cause.source();
    }
    text
}

/// A TLS handshake or certificate failure: retrying will not help.
fn is_tls_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "corrupt message",
        "invalidcontenttype",
        "certificate",
        "handshake",
        "tls",
    ]
    .iter()
    .any(|m| t.contains(m))
}

/// Why an answer may be different if asked again.
fn transient(status: StatusCode) -> Option<RetryCause> {
    match status.as_u16() {
        429 => Some(RetryCause::RateLimit),
        500 | 502 | 503 | 504 => Some(RetryCause::Network),
        _ => None,
    }
}

/// A body read that failed because nothing came in time (reqwest says so
/// only in the error's causes; its own text reads "error decoding response body").
fn is_timeout(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
        .is_some_and(reqwest::Error::is_timeout)
}

/// The HTTP client registries are reached with: the system's trusted
/// certificates, a connect timeout, and `timeout` for each wait: for an
/// answer's head, and for each read of its body (reqwest's blocking client
/// sets no deadline for the whole request, so a long download is never cut
/// short while bytes keep coming; a connection that stalls is). Every
/// connection, redirects included, goes only where `outbound` allows; no
/// proxy from the environment is used (it would connect for us, unchecked).
pub fn http_client(timeout: Option<Duration>, outbound: &Outbound) -> Result<Client, Error> {
    Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(timeout)
        .no_proxy()
        .dns_resolver(outbound.resolver())
        .redirect(outbound.redirects())
        .user_agent(concat!("builderd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Registry(format!("cannot create an HTTP client: {e}")))
}

/// The outbound policy's refusal, if that is why a request failed.
fn refusal(e: &reqwest::Error) -> Option<Error> {
    builderd_net::not_allowed(e).map(|n| Error::NotAllowed(n.to_string()))
}

impl<'a> Registry<'a> {
    /// A client for `image`'s repository. Plain HTTP only for loopback and
    /// for hosts in `insecure`. `on_retry` hears of each retry before its wait.
    /// A connection that sends nothing for `stall` fails its request (which
    /// the retry policy may try again; a download resumes where it stopped).
    /// A registry `outbound` does not allow is refused here, before any
    /// connection.
    pub fn new(
        image: &ImageRef,
        credentials: Option<Credentials>,
        insecure: &[String],
        retry: RetryPolicy,
        stall: Duration,
        outbound: &Outbound,
        on_retry: Box<dyn Fn(&RetryNotice) + Send + Sync + 'a>,
    ) -> Result<Registry<'a>, Error> {
        let host = if image.registry == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            image.registry.clone()
        };
        let plain =
            is_loopback(&host) || insecure.iter().any(|h| h == &host || h == &image.registry);
        let base = format!("{}://{host}", if plain { "http" } else { "https" });
        let url = reqwest::Url::parse(&base)
            .map_err(|e| Error::Reference(format!("{}: {e}", image.registry)))?;
        outbound
            .check_url(&url)
            .map_err(|e| Error::NotAllowed(e.to_string()))?;
        Ok(Registry {
            client: http_client(Some(stall), outbound)?,
            outbound: outbound.clone(),
            base,
            host,
            repository: image.repository.clone(),
            credentials,
            auth: Mutex::new(None),
            retry,
            stall: Some(stall),
            on_retry,
        })
    }

    /// Sends credentials only where they cannot be read on the way: over
    /// TLS, or to this machine.
    fn credentials_for(&self, url: &str) -> Result<Option<&Credentials>, Error> {
        let Some(c) = self.credentials.as_ref() else {
            return Ok(None);
        };
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::Registry(format!("{}: {url:?}: {e}", self.host)))?;
        let local = parsed.host_str().is_some_and(is_loopback);
        if parsed.scheme() != "https" && !local {
            return Err(Error::Auth(format!(
                "{}: asks for credentials over plain HTTP ({url}); builderd sends credentials only over HTTPS or to this machine",
                self.host
            )));
        }
        Ok(Some(c))
    }

    /// After failed attempt number `attempt` (1 for the first): an error if
    /// the policy says this is the end, else the wait before the next one,
    /// told to `on_retry`.
    fn after_failure(
        &self,
        attempt: u32,
        cause: RetryCause,
        message: String,
        retry_after: Option<Duration>,
    ) -> Result<Duration, Error> {
        if !self.retry.retries(cause) {
            return Err(Error::Registry(format!(
                "{message} (not retried: {} is not in the retry policy)",
                cause.name()
            )));
        }
        if attempt > self.retry.max_retries {
            return Err(Error::Registry(format!(
                "{message} (gave up after {attempt} attempts)"
            )));
        }
        let delay = self.retry.delay(attempt, retry_after);
        (self.on_retry)(&RetryNotice {
            cause,
            attempt,
            attempts: self.retry.max_retries + 1,
            delay,
            message,
        });
        Ok(delay)
    }

    /// A token or basic credentials answering `challenge`.
    fn authorize(&self, challenge: &str) -> Result<String, Error> {
        let (scheme, params) = parse_challenge(challenge);
        let param = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        match scheme.as_str() {
            "basic" => {
                let c = self.credentials_for(&self.base)?.ok_or_else(|| Error::Auth(format!("{} asks for credentials; give --creds USER:PASS or log in with docker login", self.host)))?;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.password));
                Ok(format!("Basic {token}"))
            }
            "bearer" => {
                let realm = param("realm").ok_or_else(|| {
                    Error::Registry(format!("{}: a bearer challenge without a realm", self.host))
                })?;
                // The realm is the registry's word: it goes only where the
                // outbound policy allows, like the registry itself.
                let realm_url = reqwest::Url::parse(&realm).map_err(|e| {
                    Error::Registry(format!("{}: the token realm {realm:?}: {e}", self.host))
                })?;
                self.outbound.check_url(&realm_url).map_err(|e| {
                    Error::NotAllowed(format!("{}: the token realm: {e}", self.host))
                })?;
                let scope = param("scope")
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let mut query: Vec<(&str, String)> = vec![("scope", scope)];
                if let Some(service) = param("service") {
                    query.push(("service", service));
                }
                let mut req = self.client.get(realm_url).query(&query);
                if let Some(c) = self.credentials_for(&realm)? {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                let resp = req.send().map_err(|e| {
                    refusal(&e).unwrap_or_else(|| {
                        Error::Registry(format!("token server {realm}: {}", describe(&e)))
                    })
                })?;
                if resp.status() == StatusCode::UNAUTHORIZED
                    || resp.status() == StatusCode::FORBIDDEN
                {
                    return Err(Error::Auth(format!(
                        "{}: the token server refused the credentials ({})",
                        self.host,
                        resp.status()
                    )));
                }
                if !resp.status().is_success() {
                    return Err(Error::Registry(format!(
                        "token server {realm}: {}",
                        resp.status()
                    )));
                }
                let body: serde_json::Value = resp
                    .json()
                    .map_err(|e| Error::Registry(format!("token server {realm}: {e}")))?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| {
                        Error::Registry(format!("token server {realm}: no token in its answer"))
                    })?;
                Ok(format!("Bearer {token}"))
            }
            other => Err(Error::Registry(format!(
                "{}: unsupported auth scheme {other:?}",
                self.host
            ))),
        }
    }

    /// GET with auth and retries; returns a successful response (or 206).
    fn get(&self, path: &str, headers: HeaderMap, what: &str) -> Result<Response, Error> {
        let url = format!("{}/v2/{}", self.base, path);
        let mut attempt = 0;
        let mut authorized_once = false;
        loop {
            let mut req = self.client.get(&url).headers(headers.clone());
            if let Some(auth) = self.auth.lock().unwrap().clone() {
                req = req.header(AUTHORIZATION, auth);
            }
            let failure = match req.send() {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !authorized_once => {
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let auth = self.authorize(&challenge)?;
                    *self.auth.lock().unwrap() = Some(auth);
                    authorized_once = true;
                    continue;
                }
                Ok(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED
                        || resp.status() == StatusCode::FORBIDDEN =>
                {
                    return Err(Error::Auth(format!(
                        "{}: {what}: access denied ({}); check the credentials",
                        self.host,
                        resp.status()
                    )));
                }
                Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                    return Err(Error::NotFound(format!(
                        "{}/{}: {what}: not found (404)",
                        self.host, self.repository
                    )));
                }
                Ok(resp) if transient(resp.status()).is_some() => {
                    let after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let cause = transient(resp.status()).expect("matched above");
                    (cause, format!("{}", resp.status()), after)
                }
                Ok(resp) => {
                    return Err(Error::Registry(format!(
                        "{}: {what}: {}",
                        self.host,
                        resp.status()
                    )))
                }
                Err(e) if refusal(&e).is_some() => {
                    return Err(refusal(&e).expect("matched above"));
                }
                Err(e) if self.base.starts_with("https:") && is_tls_failure(&describe(&e)) => {
                    return Err(Error::Registry(format!(
                        "{}: {what}: {}; the registry does not speak TLS or its certificate is not trusted (if it serves plain HTTP, allow that with --insecure-registry {})",
                        self.host,
                        describe(&e),
                        self.host
                    )));
                }
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    (RetryCause::Network, describe(&e), None)
                }
                Err(e) => {
                    return Err(Error::Registry(format!(
                        "{}: {what}: {}",
                        self.host,
                        describe(&e)
                    )))
                }
            };
            attempt += 1;
            let (cause, text, retry_after) = failure;
            let delay = self.after_failure(
                attempt,
                cause,
                format!("{}: {what}: {text}", self.host),
                retry_after,
            )?;
            std::thread::sleep(delay);
        }
    }

    /// The manifest (or index) for a tag or digest, with its digest.
    pub fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Digest), Error> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, MANIFEST_TYPES.parse().expect("a valid header"));
        let resp = self
            .get(
                &format!("{}/manifests/{reference}", self.repository),
                headers,
                &format!("manifest {reference}"),
            )
            .map_err(|e| match e {
                Error::NotFound(_) if reference.starts_with("sha256:") => Error::NotFound(format!(
                    "{}/{}: no manifest {reference} (404: a digest the repository does not have)",
                    self.host, self.repository
                )),
                Error::NotFound(_) => Error::NotFound(format!(
                    "{}/{}: tag {reference} not found (404: no such tag, or no such repository)",
                    self.host, self.repository
                )),
                other => other,
            })?;
        let mut body = Vec::new();
        resp.take(MAX_DOC + 1)
            .read_to_end(&mut body)
            .map_err(|e| Error::Registry(format!("{}: manifest {reference}: {e}", self.host)))?;
        if body.len() as u64 > MAX_DOC {
            return Err(Error::Manifest(format!(
                "manifest {reference} is larger than {MAX_DOC} bytes"
            )));
        }
        let digest = Digest::of(&body);
        if reference.starts_with("sha256:") && digest.as_str() != reference {
            return Err(Error::Digest {
                digest: reference.to_string(),
                reason: format!("the registry sent a manifest whose digest is {digest}"),
            });
        }
        Ok((body, digest))
    }

    /// Downloads a blob into `partial` (resuming from what it holds),
    /// verifying size and digest; on a mismatch `partial` is deleted.
    pub fn download(
        &self,
        digest: &Digest,
        size: u64,
        partial: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::Io {
            what: format!("blob {digest} ({})", partial.display()),
            source: e,
        };
        // The hash follows the bytes as they are written, across resumed
        // attempts; only a prefix left by an earlier run is read back.
        let mut hash = Sha256::new();
        let mut hashed = 0u64;
        let mut attempt = 0;
        loop {
            let have = std::fs::metadata(partial)
                .map(|m| m.len())
                .unwrap_or(0)
                .min(size);
            let mut headers = HeaderMap::new();
            if have > 0 {
                headers.insert(
                    RANGE,
                    format!("bytes={have}-").parse().expect("a valid header"),
                );
            }
            // The request itself was retried inside `get`: its errors are final.
            let mut resp = self.get(
                &format!("{}/blobs/{digest}", self.repository),
                headers,
                &format!("blob {digest}"),
            )?;
            let resumed = have > 0 && resp.status() == StatusCode::PARTIAL_CONTENT;
            if !resumed {
                hash = Sha256::new();
                hashed = 0;
            } else if hashed != have {
                hash = Sha256::new();
                std::io::copy(&mut File::open(partial).map_err(io)?.take(have), &mut hash)
                    .map_err(io)?;
                hashed = have;
            }
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(!resumed)
                .append(resumed)
                .open(partial)
                .map_err(io)?;
            let mut done = hashed;
            progress(done);
            let mut buf = vec![0u8; 1 << 20];
            // Only the body can end early; that is what resuming is for.
            let cut = loop {
                let n = match resp.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => n,
                    Err(e) if is_timeout(&e) => {
                        let waited = self.stall.map_or("too long".into(), |d| format!("{d:?}"));
                        break Some(format!(
                            "nothing came for {waited} after {done} of {size} bytes"
                        ));
                    }
                    Err(e) => break Some(e.to_string()),
                };
                if done + n as u64 > size {
                    drop(file);
                    let _ = std::fs::remove_file(partial);
                    return Err(Error::Digest {
                        digest: digest.to_string(),
                        reason: format!(
                            "the registry sent more than the {size} bytes the manifest says"
                        ),
                    });
                }
                file.write_all(&buf[..n]).map_err(io)?;
                hash.update(&buf[..n]);
                done += n as u64;
                progress(done);
            };
            file.sync_all().map_err(io)?;
            hashed = done;
            if done == size {
                break;
            }
            let why =
                cut.unwrap_or_else(|| format!("the connection ended after {done} of {size} bytes"));
            attempt += 1;
            let delay = self.after_failure(
                attempt,
                RetryCause::Network,
                format!(
                    "{}: blob {digest}: {why} (resuming where it stopped)",
                    self.host
                ),
                None,
            )?;
            std::thread::sleep(delay);
        }
        let got = format!("sha256:{}", hex(&hash.finalize()));
        if got != digest.as_str() {
            let _ = std::fs::remove_file(partial);
            return Err(Error::Digest {
                digest: digest.to_string(),
                reason: format!("the registry sent content whose digest is {got}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(
            params[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(
            params[2],
            ("scope".into(), "repository:library/alpine:pull".into())
        );
        assert_eq!(parse_challenge(r#"Basic realm="test""#).0, "basic");
    }

    #[test]
    fn only_loopback_is_plain_http_by_default() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
