//! An archive named by its URL (`archive:https://HOST/PATH[#sha256=HEX]`),
//! fetched before anything of it is read: https only (plain http only to
//! loopback, and only where private addresses are allowed), under the
//! outbound policy (every address checked as it is resolved, every
//! redirect too), no more than the archive's byte limit, a stalled server
//! dropped, and the sha256 the URL pins checked against what arrived.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::error::SourceError;

/// A server that sends nothing for this long is dropped.
const STALL: Duration = Duration::from_secs(60);

/// Whether `source` (what follows `archive:`) is a URL.
pub fn is_url(source: &str) -> bool {
    source.starts_with("https://") || source.starts_with("http://")
}

/// Fetches `url` into `dest`; `public_only` keeps it to public addresses.
/// Answers the bytes fetched.
pub fn fetch(url: &str, dest: &Path, max_bytes: u64, public_only: bool) -> Result<u64> {
    let refuse = |why: String| anyhow::Error::new(SourceError(why));
    let (address, pin) = match url.split_once('#') {
        Some((a, fragment)) => {
            let hex = fragment
                .strip_prefix("sha256=")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    refuse(format!(
                        "{url:?}: the only fragment an archive URL takes is #sha256=HEX (64 hex digits)"
                    ))
                })?;
            (a, Some(hex.to_ascii_lowercase()))
        }
        None => (url, None),
    };
    let parsed = reqwest::Url::parse(address)
        .map_err(|e| refuse(format!("{address:?} is not a URL: {e}")))?;
    let loopback = match parsed.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback && !public_only => {}
        _ => {
            return Err(refuse(format!(
                "{address}: archives are fetched over https (plain http only from loopback, where \
                 the operator allows private addresses)"
            )))
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse(format!(
            "{}: no credentials in an archive URL",
            parsed.host_str().unwrap_or_default()
        )));
    }
    let outbound = match public_only {
        true => builderd_oci::Outbound::public_only("--allow-private-archive-urls"),
        false => builderd_oci::Outbound::any(),
    };
    outbound
        .check_url(&parsed)
        .map_err(|e| refuse(e.to_string()))?;
    // Its timeout bounds each wait (the head, each read of the body): a stall.
    let client = builderd_oci::http_client(Some(STALL), &outbound)?;
    let mut answer =
        client
            .get(parsed.clone())
            .send()
            .map_err(|e| match builderd_net::not_allowed(&e) {
                Some(n) => refuse(n.to_string()),
                None => refuse(format!("fetching {address}: {e}")),
            })?;
    if !answer.status().is_success() {
        return Err(refuse(format!(
            "fetching {address}: the server answered {}",
            answer.status()
        )));
    }
    let too_big = |n: u64| {
        refuse(format!(
            "{address}: the archive is {n} bytes or more, past its max_bytes limit ({max_bytes} bytes)"
        ))
    };
    if let Some(n) = answer.content_length().filter(|&n| n > max_bytes) {
        return Err(too_big(n));
    }
    let mut file = std::fs::File::create(dest).with_context(|| dest.display().to_string())?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = answer
            .read(&mut buf)
            .map_err(|e| refuse(format!("fetching {address}: {e}")))?;
        if n == 0 {
            break;
        }
        got += n as u64;
        if got > max_bytes {
            return Err(too_big(got));
        }
        hash.update(&buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| dest.display().to_string())?;
    }
    file.sync_all()?;
    let sha256 = format!("{:x}", hash.finalize());
    match pin {
        Some(pinned) if pinned != sha256 => Err(refuse(format!(
            "{address}: the archive's sha256 is {sha256}, not the {pinned} its URL pins"
        ))),
        _ => Ok(got),
    }
}
