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
        let r = s.strip_prefix("docker://").unwrap_or(s);
        ImageRef::parse(r).map(Source::Registry)
    }
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, Error> {
        let bad = |why: &str| Error::Reference(format!("{s:?} is not an image reference: {why}"));
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(bad("empty or contains spaces"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (s, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || !repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        {
            return Err(bad(
                "the repository must be lowercase letters, digits and ._-/",
            ));
        }
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad("invalid tag"));
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
