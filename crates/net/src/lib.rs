//! builderd-net: the one outbound-address policy for everything the server
//! fetches on a tenant's behalf (registries, token realms, redirects,
//! webhooks). A tenant names the URL, so a tenant must not be able to aim the
//! server at its own network: by default only public unicast addresses may be
//! reached, checked when a connection is made (by the resolver the HTTP
//! client uses, so a name that changes its address is caught), for every
//! connection, after every redirect. Addresses written into a URL never reach
//! a resolver: `check_url` checks those before a request is sent, and the
//! redirect policy checks them for every hop.
//!
//! The operator opts in to private addresses per use (`--allow-private-registries`,
//! `--allow-private-webhooks`); the flag's name is part of every refusal, so a
//! tenant's error says what the operator could change, and nothing about what
//! listens at the address (no connection is ever tried).

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// What may be reached.
#[derive(Clone, Debug)]
pub struct Outbound {
    allow_private: bool,
    /// The operator's switch for private addresses, named in refusals.
    opt_in: &'static str,
}

/// A connection the policy does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: builderd connects to public addresses only (the operator may allow private ones with {opt_in})")]
pub struct NotAllowed {
    /// "registry.local resolves to 10.0.0.5, a private address".
    pub what: String,
    pub opt_in: &'static str,
}

/// The most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

impl Outbound {
    /// Public addresses only; `opt_in` names the operator's flag that would
    /// allow the rest.
    pub fn public_only(opt_in: &'static str) -> Outbound {
        Outbound {
            allow_private: false,
            opt_in,
        }
    }

    /// Any address (a person's own command line, or an operator's opt-in).
    pub fn any() -> Outbound {
        Outbound {
            allow_private: true,
            opt_in: "",
        }
    }

    /// `allow_private` true: any address; else public ones only.
    pub fn new(allow_private: bool, opt_in: &'static str) -> Outbound {
        Outbound {
            allow_private,
            opt_in,
        }
    }

    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    fn refuse(&self, what: String) -> NotAllowed {
        NotAllowed {
            what,
            opt_in: self.opt_in,
        }
    }

    /// May `ip` (the address of `host`) be reached?
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), NotAllowed> {
        if self.allow_private {
            return Ok(());
        }
        match kind_of(ip) {
            None => Ok(()),
            Some(kind) if host == ip.to_string() => {
                Err(self.refuse(format!("{host} is {}", with_article(kind))))
            }
            Some(kind) => {
                Err(self.refuse(format!("{host} resolves to {ip}, {}", with_article(kind))))
            }
        }
    }

    /// Checks what a URL names before a request: http or https, a host, and
    /// an address written in it (a name is checked when it is resolved).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), NotAllowed> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.refuse(format!("{url}: only http and https are fetched")));
        }
        match url.host() {
            None => Err(self.refuse(format!("{url} names no host"))),
            Some(url::Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(&ip.to_string(), IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => match name.parse::<IpAddr>() {
                Ok(ip) => self.check_ip(name, ip),
                // "localhost" is loopback by definition, whatever the
                // resolver would say.
                Err(_) if !self.allow_private && is_localhost(name) => {
                    Err(self.refuse(format!("{name} is a loopback address")))
                }
                Err(_) => Ok(()),
            },
        }
    }

    /// Resolves `host` and checks every address it has (for an early,
    /// clear answer to the tenant; connections are checked again when made).
    pub async fn check_host(&self, host: &str) -> Result<(), HostError> {
        let url = reqwest::Url::parse(&format!("http://{host}/"))
            .map_err(|e| HostError::Unresolved(format!("{host}: {e}")))?;
        self.check_url(&url)?;
        if self.allow_private {
            return Ok(());
        }
        if let Some(url::Host::Domain(name)) = url.host() {
            let addrs = tokio::net::lookup_host((name, 0))
                .await
                .map_err(|e| HostError::Unresolved(format!("cannot resolve {name}: {e}")))?;
            for a in addrs {
                self.check_ip(name, a.ip())?;
            }
        }
        Ok(())
    }

    /// The resolver for an HTTP client under this policy: a name is
    /// refused when any of its addresses is not allowed.
    pub fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver(self.clone()))
    }

    /// The redirect policy under this policy: at most `MAX_REDIRECTS`
    /// hops, never from https to plain http, never to an address written
    /// in the URL that the policy refuses (names are checked when resolved).
    pub fn redirects(&self) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            let downgrade = attempt.url().scheme() == "http"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if downgrade {
                let to = attempt.url().to_string();
                return attempt.error(format!("a redirect from https to plain http ({to})"));
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        })
    }
}

/// Why `check_host` refused.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    NotAllowed(#[from] NotAllowed),
    #[error("{0}")]
    Unresolved(String),
}

/// The policy's refusal somewhere in `e`'s causes (an HTTP client's error
/// wraps the resolver's).
pub fn not_allowed<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a NotAllowed> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(n) = c.downcast_ref::<NotAllowed>() {
            return Some(n);
        }
        // An io::Error's source is its inner error's source, not the inner
        // error itself.
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(n) = inner.downcast_ref::<NotAllowed>() {
                return Some(n);
            }
        }
        cause = c.source();
    }
    None
}

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// A name resolver that keeps to an `Outbound` policy.
pub struct Resolver(Outbound);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            if !policy.allow_private && is_localhost(&host) {
                let refused = policy.refuse(format!("{host} is a loopback address"));
                return Err(Box::new(refused) as Box<dyn StdError + Send + Sync>);
            }
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                policy.check_ip(&host, a.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn with_article(kind: &str) -> String {
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {kind} address")
}

/// Is `ip` a public unicast address, one the internet routes to a host?
pub fn is_public(ip: IpAddr) -> bool {
    kind_of(ip).is_none()
}

/// What kind of non-public address `ip` is, or None for a public one.
/// IPv4 after IANA's special-purpose registry (every block not globally
/// reachable); IPv6 after its registry, with the forms that carry an IPv4
/// address (mapped, NAT64, 6to4) judged by that address.
pub fn kind_of(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => kind_of_v4(v4),
        IpAddr::V6(v6) => kind_of_v6(v6),
    }
}

fn kind_of_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (\"this network\")",
        (10, _, _) => "private",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local",
        (172, 16..=31, _) => "private",
        (192, 0, 0) => "IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay",
        (192, 168, _) => "private",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        _ => return None,
    })
}

fn kind_of_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // ::ffff:a.b.c.d, the IPv4 address itself.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return kind_of_v4(v4);
    }
    // 64:ff9b::/96, the well-known NAT64 prefix: the gateway connects to
    // the IPv4 address in its last 32 bits.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return kind_of_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // 2002::/16, 6to4: the relay reaches the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return kind_of_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    Some(match s[0] {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        // ::/96, IPv4-compatible (deprecated), and the rest of ::/8.
        0x0000..=0x00ff => "IPv4-compatible or reserved",
        0xff00..=0xffff => "multicast",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xfc00..=0xfdff => "unique local",
        // Teredo (2001::/32), benchmarking, ORCHID and the rest of
        // 2001::/23: not globally reachable.
        0x2001 if s[1] < 0x0200 => "IETF protocol (Teredo, benchmarking, ORCHID)",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0x3fff if s[1] < 0x1000 => "documentation",
        // Only 2000::/3 is global unicast; 64:ff9b:1::/48 (local NAT64),
        // 100::/64 (discard), 5f00::/16 (SRv6) and the rest are not.
        0x2000..=0x3fff => return None,
        _ => "reserved",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_addresses_are_not_public() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.8.8",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",         // IPv4-compatible
            "::ffff:127.0.0.1",    // IPv4-mapped loopback
            "::ffff:10.0.0.1",     // IPv4-mapped private
            "64:ff9b::7f00:1",     // NAT64 of 127.0.0.1
            "64:ff9b::a9fe:a9fe",  // NAT64 of 169.254.169.254
            "64:ff9b:1::1",        // local-use NAT64
            "2002:7f00:1::1",      // 6to4 of 127.0.0.1
            "2002:c0a8:101::1",    // 6to4 of 192.168.1.1
            "2001::1",             // Teredo
            "2001:0:4136:e378::1", // Teredo
            "2001:2::1",           // benchmarking
            "2001:db8::1",         // documentation
            "3fff::1",             // documentation (2024)
            "100::1",              // discard-only
            "5f00::1",             // SRv6 SIDs
            "fc00::1",             // unique local
            "fd12:3456::1",        // unique local
            "fe80::1",             // link-local
            "febf::1",             // link-local
            "fec0::1",             // site-local
            "ff02::1",             // multicast
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} should not be public");
        }
    }

    #[test]
    fn public_addresses_are_public() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "198.17.255.255",
            "223.255.255.254",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    #[test]
    fn urls_with_addresses_are_checked_before_any_connection() {
        let policy = Outbound::public_only("--allow-private-things");
        let check = |u: &str| policy.check_url(&reqwest::Url::parse(u).unwrap());
        let e = check("http://127.0.0.1:22/x").unwrap_err();
        assert_eq!(e.what, "127.0.0.1 is a loopback address");
        assert!(e.to_string().contains("--allow-private-things"), "{e}");
        assert!(check("http://[::ffff:169.254.169.254]/").is_err());
        assert!(check("http://[64:ff9b::a00:1]/").is_err());
        assert!(check("http://localhost:5000/").is_err());
        assert!(check("http://app.localhost/").is_err());
        assert!(check("ftp://example.com/").is_err());
        assert!(check("https://registry.example.com/v2/").is_ok());
        assert!(check("https://8.8.8.8/").is_ok());
        assert!(Outbound::any()
            .check_url(&reqwest::Url::parse("http://127.0.0.1/").unwrap())
            .is_ok());
    }

    #[tokio::test]
    async fn names_are_checked_by_what_they_resolve_to() {
        let policy = Outbound::public_only("--allow-private-things");
        let e = policy.check_host("localhost:5000").await.unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(policy.check_host("127.0.0.1:5000").await.is_err());
        assert!(Outbound::any().check_host("localhost:5000").await.is_ok());
    }

    #[test]
    fn refusals_are_found_among_causes() {
        let refused = Outbound::public_only("--x")
            .check_ip("10.0.0.1", "10.0.0.1".parse().unwrap())
            .unwrap_err();
        let wrapped = std::io::Error::other(refused.clone());
        assert_eq!(not_allowed(&wrapped), Some(&refused));
        assert_eq!(not_allowed(&std::io::Error::other("other")), None);
    }
}
