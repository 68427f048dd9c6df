//! The `egress` network of build steps: a network namespace of the build's
//! own, joined to the host by a veth pair, its traffic NATed out, with the
//! host's nftables table `inet builderd` dropping what a tenant must not
//! reach: loopback, private, shared (CGNAT), link-local (so cloud metadata),
//! multicast and reserved addresses, any of the host's own addresses, and
//! IPv6. The one exception is DNS (port 53) to the host's own nameservers,
//! which are often private. The namespace belongs to the host's user
//! namespace, so a step (root only in its own) cannot change its addresses,
//! routes or filters.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// Each build's namespace is `PREFIX{pid}-{n}`.
const NAMESPACE_PREFIX: &str = "builderd-steps-";
/// The host end of each build's veth pair is `bdxNh`; a step's is eth0.
const LINK_PREFIX: &str = "bdx";
/// Each build gets the /30 number N of this /16 (N is its link's number).
const SUBNET: [u8; 2] = [10, 89];
const LINKS: u32 = 1 << 14;

/// Where a step's traffic must not go (IPv4; IPv6 is dropped whole).
const FORBIDDEN: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// A build's network namespace, removed (with its veth pair) when dropped.
pub struct Egress {
    name: String,
}

impl Egress {
    /// Makes the namespace, its link to the host and the host's rules.
    pub fn new() -> Result<Egress> {
        let what = "give build steps a network";
        super::host::require("ip", "-V", "iproute2", what)?;
        super::host::require("nft", "-V", "nftables", what)?;
        install_rules()?;
        // Forwarding is off on a host that routes nothing yet; the rules
        // above decide what a step's packets may reach.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("turning on IPv4 forwarding for the steps' network")?;
        let name = format!("{NAMESPACE_PREFIX}{}-{}", std::process::id(), unique());
        ip(&["netns", "add", &name])?;
        let egress = Egress { name };
        let number = egress.link()?;
        let [a, b] = SUBNET;
        let base = number * 4;
        let (c, d) = ((base >> 8) as u8, (base & 0xff) as u8);
        let host = Ipv4Addr::new(a, b, c, d + 1);
        let step = Ipv4Addr::new(a, b, c, d + 2);
        let host_link = format!("{LINK_PREFIX}{number}h");
        let ns = egress.name.as_str();
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{step}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &host.to_string(),
        ])?;
        Ok(egress)
    }

    /// The namespace, as the engine joins it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Claims a free link number by making its veth pair (the kernel
    /// refuses a name in use, so two builds never share one); the step's
    /// end goes into the namespace as eth0.
    fn link(&self) -> Result<u32> {
        let start = std::process::id() % LINKS;
        for i in 0..LINKS {
            let n = (start + i) % LINKS;
            let out = Command::new("ip")
                .args(["link", "add", &format!("{LINK_PREFIX}{n}h"), "type", "veth"])
                .args(["peer", "name", "eth0", "netns", &self.name])
                .stdin(Stdio::null())
                .output()
                .context("running ip")?;
            if out.status.success() {
                return Ok(n);
            }
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("exists") {
                anyhow::bail!("making the steps' network link: {}", err.trim());
            }
        }
        anyhow::bail!("all {LINKS} of the steps' network links are in use")
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        // The namespace's end of the pair goes with it, and the host's end
        // with its peer.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Removes the namespaces of builderd processes that are gone (killed
/// before they could remove their own).
pub fn sweep() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for name in entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
    {
        if super::owner::gone(&name, NAMESPACE_PREFIX) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// The host's rules for every build's link, made again as a whole in one
/// transaction (so concurrent builds never see half of them).
fn install_rules() -> Result<()> {
    let dns = nameservers();
    let link = format!("\"{LINK_PREFIX}*\"");
    let [a, b] = SUBNET;
    let mut dns_rules = String::new();
    for server in &dns {
        for proto in ["udp", "tcp"] {
            dns_rules.push_str(&format!(
                "    iifname {link} ip daddr {server} {proto} dport 53 accept\n"
            ));
        }
    }
    let rules = format!(
        "table inet builderd {{}}
delete table inet builderd
table inet builderd {{
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    oifname {link} ct state established,related accept
    oifname {link} drop
    iifname {link} ip saddr != {a}.{b}.0.0/16 drop
    iifname {link} meta nfproto ipv6 drop
{dns_rules}    iifname {link} ip daddr {{ {forbidden} }} drop
    iifname {link} fib daddr type local drop
  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname {link} drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {a}.{b}.0.0/16 oifname != {link} masquerade
  }}
}}
",
        forbidden = FORBIDDEN.join(", ")
    );
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    nft.stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())
        .context("writing the steps' network rules to nft")?;
    let out = nft.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        anyhow::bail!(
            "installing the steps' network rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The host's IPv4 nameservers that a step can reach through the host
/// (loopback ones, such as a local resolver's stub, cannot be).
fn nameservers() -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
