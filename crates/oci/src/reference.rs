//! Image sources in skopeo's transport syntax, and registry references
//! normalised as docker does (`alpine` is `docker.io/library/alpine:latest`).

use std::path::PathBuf;

use crate::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host[:port], as written (docker.io for Docker Hub).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Registry(ImageRef),
    OciLayout { dir: PathBuf, tag: Option<String> },
    OciArchive { file: PathBuf, tag: Option<String> },
    DockerArchive { file: PathBuf },
}

/// `PATH[:TAG]`: the tag is what follows the last ':' if it holds no '/'.
fn path_and_tag(s: &str) -> (PathBuf, Option<String>) {
    match s.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !path.is_empty() => {
            (PathBuf::from(path), Some(tag.to_string()))
        }
        _ => (PathBuf::from(s), None),
    }
}

/// What to write for a SOURCE that is a path, not an image reference.
pub fn path_hint(s: &str) -> String {
    format!(
        "{s:?} is a path, not an image reference: write oci:{s} for an OCI image layout, \
         oci-archive:{s} for a tar of one, or docker-archive:{s} for `docker save` output"
    )
}

impl Source {
    pub fn parse(s: &str) -> Result<Source, Error> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = path_and_tag(rest);
            return Ok(Source::OciLayout { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = path_and_tag(rest);
            return Ok(Source::OciArchive { file, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            return Ok(Source::DockerArchive {
                file: PathBuf::from(rest),
            });
        }
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") {
            return Err(Error::Reference(path_hint(s)));
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        ImageRef::parse(r).map(Source::Registry)
    }
}

/// The longest repository name with its registry (the distribution spec's
/// bound).
const MAX_NAME: usize = 255;

/// `host[:port]`: DNS name components of letters, digits and inner '-', an
/// IPv4 address, or an IPv6 address in brackets; a port of 1 to 65535.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match after {
                    "" => return true,
                    p => match p.strip_prefix(':') {
                        Some(port) => ("", Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        },
        None => match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        },
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if !matches!(p.parse::<u32>(), Ok(1..=65535)) {
            return false;
        }
    }
    if host.is_empty() && registry.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// A path component: lowercase letters and digits, separated by one '.',
/// one or two '_', or any number of '-' (so no "..", no leading or trailing
/// separator).
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let x = b[i];
        if x.is_ascii_lowercase() || x.is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || b"._-".contains(&x))
}

impl ImageRef {
    /// Parses a reference by the distribution spec's grammar: anything
    /// outside it (a `..`, a stray character, an empty component) is refused
    /// rather than passed on to a registry.
    pub fn parse(s: &str) -> Result<ImageRef, Error> {
        let bad = |why: &str| Error::Reference(format!("{s:?} is not an image reference: {why}"));
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("empty, or holds spaces or characters other than ASCII"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (s, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') && !t.contains(']') => (n, Some(t.to_string())),
            _ => (name, None),
        };
        // `app:1:x`: a second ':' after the last '/' is a tag gone wrong,
        // not a repository name (`registry:port/app:1` has its first one
        // before the '/').
        if tag.is_some()
            && name
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':'))
        {
            return Err(bad(
                "a tag follows a single ':' after the repository name (this has more than one)",
            ));
        }
        if name.len() > MAX_NAME {
            return Err(bad(&format!(
                "the name is longer than {MAX_NAME} characters"
            )));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first.starts_with('[')
                    || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(bad(&format!(
                "{registry:?} is not a registry host (a DNS name or address, with an optional port)"
            )));
        }
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        // The full name, as it prints (docker.io/library/… included).
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(bad(&format!(
                "the name is longer than {MAX_NAME} characters"
            )));
        }
        if !repository.split('/').all(valid_component) {
            return Err(bad(&format!(
                "the repository {repository:?} must be path components of lowercase letters and digits, separated by '/' and joined by '.', '_', '__' or '-'"
            )));
        }
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad(&format!(
                    "the tag {t:?} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
                )));
            }
        }
        if let Some(d) = &digest {
            crate::Digest::parse(d)?;
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`: where the image's blobs were offered, which a
    /// cached blob must have come from to be reused for this image.
    pub fn origin(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_references_normalise() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(
            ImageRef::parse("localhost:5000/app:v1")
                .unwrap()
                .to_string(),
            "localhost:5000/app:v1"
        );
        assert_eq!(
            ImageRef::parse("ghcr.io/org/app").unwrap().to_string(),
            "ghcr.io/org/app:latest"
        );
        assert_eq!(
            ImageRef::parse("user/app:1.0").unwrap().to_string(),
            "docker.io/user/app:1.0"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("127.0.0.1:5055/x/y@{d}")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.tag, r.digest.as_deref()),
            ("127.0.0.1:5055", None, Some(d.as_str()))
        );
        assert!(ImageRef::parse("UPPER/case").is_err());
        assert!(ImageRef::parse("x@sha256:zz").is_err());
        let r = ImageRef::parse("[::1]:5000/app:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("[::1]:5000", "app")
        );
        assert_eq!(r.origin(), "[::1]:5000/app");
    }

    #[test]
    fn paths_and_double_tags_are_told_apart() {
        let e = Source::parse("/tmp/x/layout").unwrap_err().to_string();
        assert!(e.contains("oci:/tmp/x/layout"), "{e}");
        assert!(Source::parse("./layout").is_err());
        assert!(Source::parse("../layout").is_err());
        let e = ImageRef::parse("demo/app:1:x").unwrap_err().to_string();
        assert!(e.contains("a tag follows a single ':'"), "{e}");
        assert!(ImageRef::parse("reg:5000/app:1").is_ok());
    }

    #[test]
    fn references_outside_the_grammar_are_refused() {
        for bad in [
            "127.0.0.1:5000/../x",
            "127.0.0.1:5000/a/../../x",
            "reg.io/a//b",
            "reg.io/a/",
            "reg.io/-a",
            "reg.io/a.",
            "reg.io/a...b",
            "reg.io/a___b",
            "reg.io/a%2f..",
            "reg.io/a?x=1",
            "reg.io/a#frag",
            "reg.io:0/a",
            "reg.io:99999/a",
            "reg.io:/a",
            "-reg.io/a",
            "reg..io/a",
            "[::1/a",
            "[zz]:5000/a",
            "reg.io/a:.tag",
            "reg.io/a:-tag",
            "reg.io/a:tag/x",
            "a b",
            "caf\u{e9}/x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("reg.io/{}", "a".repeat(250));
        assert!(ImageRef::parse(&long).is_err());
        // Found by the fuzzer: a short name that is too long once
        // normalised; it must be refused as written, not only as printed.
        let short = "a".repeat(240);
        assert!(ImageRef::parse(&short).is_err());
        let fits = "a".repeat(255 - "docker.io/library/".len());
        let r = ImageRef::parse(&fits).unwrap();
        assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
        for good in [
            "reg.io/a.b/c__d/e---f:_t.1-x",
            "reg.io:443/x",
            "10.0.0.1:5000/x",
            "Reg.IO/x",
        ] {
            assert!(ImageRef::parse(good).is_ok(), "{good:?} should parse");
        }
    }

    #[test]
    fn transports_parse() {
        assert_eq!(
            Source::parse("oci:/tmp/l:v1").unwrap(),
            Source::OciLayout {
                dir: "/tmp/l".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Source::parse("oci:/tmp/l").unwrap(),
            Source::OciLayout {
                dir: "/tmp/l".into(),
                tag: None
            }
        );
        assert_eq!(
            Source::parse("docker-archive:/a.tar").unwrap(),
            Source::DockerArchive {
                file: "/a.tar".into()
            }
        );
        assert!(matches!(
            Source::parse("docker://alpine").unwrap(),
            Source::Registry(_)
        ));
    }
}
