//! How a build fails: every error says whose fault it is (`Category`), so
//! the service can say what to do about it, and whether trying again later
//! may pass. Inside, the stages pass errors up with context (`anyhow`); at
//! the library's edge each becomes an `Error` with its category.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A failed build, as the library's caller gets it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub category: Category,
    /// The machine ran short for a moment (a full disk, no memory).
    pub temporary: bool,
    /// The source's server could not be reached, or the connection broke.
    pub network: bool,
    /// The error and its causes, each cause once.
    pub message: String,
}

impl Error {
    pub fn of(e: &anyhow::Error) -> Error {
        Error {
            category: Category::of(e),
            temporary: is_temporary(e),
            network: failure_of(e) == Some(GitFailure::Network),
            message: message(e),
        }
    }
}

/// The error and its causes, each cause only if the text so far does not
/// already say it (our error types include their cause in their message).
pub fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

/// Whose fault a failure is, so the service can say what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The image could not be had: registry, network, credentials, digests.
    Source,
    /// A limit or the machine: the size limit, a full disk.
    Resource,
    /// A build step ran past the steps' time limit.
    Timeout,
    /// Anything else: the image could not be made into a rootfs, or a
    /// build step failed.
    Build,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Source => "source",
            Category::Resource => "resource",
            Category::Timeout => "timeout",
            Category::Build => "build",
        }
    }

    /// From the error's causes: a registry or blob error anywhere in the
    /// chain (also inside the I/O error a layer read turns it into) is the
    /// source's; no space or quota on the disk, or the size limit, is a resource.
    pub fn of(e: &anyhow::Error) -> Category {
        for cause in e.chain() {
            if cause.is::<builderd_oci::Error>()
                || cause.is::<SourceError>()
                || cause.is::<GitError>()
            {
                return Category::Source;
            }
            if cause.is::<SizeLimitExceeded>() {
                return Category::Resource;
            }
            match cause.downcast_ref::<StepError>() {
                Some(StepError::Memory { .. } | StepError::Pids { .. }) => {
                    return Category::Resource
                }
                Some(StepError::Timeout { .. }) => return Category::Timeout,
                Some(StepError::Failed { .. }) | None => {}
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                    return Category::Resource;
                }
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<builderd_oci::Error>())
                {
                    return Category::Source;
                }
            }
        }
        Category::Build
    }
}

/// The machine ran short for a moment: no space or quota left on the disk,
/// no memory. (The size limit is a resource too, but not a passing one.)
pub fn is_temporary(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|code| [libc::ENOSPC, libc::EDQUOT, libc::ENOMEM].contains(&code))
    })
}

/// Why `git` failed, as far as its words tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitFailure {
    /// The server refused the credentials, or asked for some and none
    /// were given.
    Credentials,
    /// No such repository (or one the credentials may not see).
    NoRepository,
    /// The host could not be reached, or the connection broke: trying
    /// again later may pass.
    Network,
    /// The build's time for fetching ran out.
    Timeout,
    /// The repository is larger than the build allows.
    TooLarge,
    /// The server's host key is not the one the operator knows.
    HostKey,
    Other,
}

/// A failed `git` command: what it was doing, why, and its last words.
#[derive(Debug, thiserror::Error)]
#[error("git could not {what}: {}", self.explained())]
pub struct GitError {
    pub what: String,
    pub failure: GitFailure,
    pub detail: String,
}

impl GitError {
    fn explained(&self) -> String {
        let why = match self.failure {
            GitFailure::Credentials => "the server refused the credentials (or wants some)",
            GitFailure::NoRepository => {
                "the repository does not exist or these credentials may not read it"
            }
            GitFailure::Network => "the server could not be reached",
            GitFailure::Timeout => "the time for fetching the source ran out",
            GitFailure::TooLarge => "the repository is larger than the build allows",
            GitFailure::HostKey => {
                "the server's SSH host key is not known (give the operator's known_hosts)"
            }
            GitFailure::Other => "",
        };
        match (why.is_empty(), self.detail.is_empty()) {
            (true, _) => self.detail.clone(),
            (false, true) => why.to_string(),
            (false, false) => format!("{why}: {}", self.detail),
        }
    }
}

/// The failure `e` is, if git's.
pub fn failure_of(e: &anyhow::Error) -> Option<GitFailure> {
    e.chain()
        .find_map(|c| c.downcast_ref::<GitError>())
        .map(|g| g.failure)
}

/// A problem with the SOURCE argument itself (its syntax, its platform).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// The image would be larger than a limit: the build's size limit, or what
/// is left of the tenant's storage.
#[derive(Debug, thiserror::Error)]
pub struct SizeLimitExceeded {
    /// The image's size, when it was finished; None when its content went
    /// past the limit while it was written (and the writing stopped there).
    pub size: Option<u64>,
    pub limit: u64,
    pub which: Limit,
}

/// Which limit an image went past.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The build's size limit, under this name (`--size-limit` on the
    /// command line, `size_limit_bytes` in a service's build config).
    Size(String),
    /// What is left of the tenant's storage quota.
    Storage,
}

impl std::fmt::Display for SizeLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::units::human;
        match self.size {
            Some(size) => write!(f, "the image is {size} bytes ({})", human(size))?,
            None => write!(f, "the image's content grew past the limit")?,
        }
        let limit = self.limit;
        match &self.which {
            Limit::Size(name) => write!(
                f,
                ", over the size limit of {limit} bytes ({}); raise {name} or make the image smaller",
                human(limit)
            ),
            Limit::Storage => write!(
                f,
                ", over the {limit} bytes ({}) left of the tenant's storage quota; delete builds to free space",
                human(limit)
            ),
        }
    }
}

/// A step ended the build: it failed, or went over a limit.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("build step {number} failed with exit code {code}: {command}{}", tail_text(.tail))]
    Failed {
        number: usize,
        command: String,
        code: i32,
        tail: Vec<String>,
    },
    #[error("build step {number} ran out of memory: the steps' limit is {}: {command}", crate::units::human(*.limit))]
    Memory {
        number: usize,
        command: String,
        limit: u64,
    },
    #[error("build step {number} hit the steps' limit of {limit} processes: {command}")]
    Pids {
        number: usize,
        command: String,
        limit: u64,
    },
    #[error("build step {number} was still running when the steps' time limit of {}s ran out: {command}", .limit.as_secs())]
    Timeout {
        number: usize,
        command: String,
        limit: Duration,
    },
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("\nlast output:\n{}", tail.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_the_cause() {
        let digest = anyhow::Error::new(builderd_oci::Error::Digest {
            digest: "sha256:00".into(),
            reason: "mismatch".into(),
        })
        .context("reading layer 1");
        assert_eq!(Category::of(&digest), Category::Source);

        let in_io = anyhow::Error::new(std::io::Error::other(builderd_oci::Error::Auth(
            "401".into(),
        )));
        assert_eq!(Category::of(&in_io), Category::Source);

        // A blob found not to match its digest while it is read.
        let blob = b"layer";
        let mut checked = builderd_oci::VerifyingReader::new(
            &b"layeR"[..],
            builderd_oci::Digest::of(blob),
            blob.len() as u64,
        );
        let mismatch = std::io::copy(&mut checked, &mut std::io::sink()).unwrap_err();
        assert_eq!(
            Category::of(&anyhow::Error::new(mismatch)),
            Category::Source
        );

        let full = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("writing the image");
        assert_eq!(Category::of(&full), Category::Resource);

        assert!(is_temporary(&full));
        let big = anyhow::Error::new(SizeLimitExceeded {
            size: Some(2),
            limit: 1,
            which: Limit::Size("--size-limit".into()),
        });
        assert_eq!(Category::of(&big), Category::Resource);
        assert!(!is_temporary(&big));

        assert_eq!(
            Category::of(&anyhow::anyhow!("no systemd in the image")),
            Category::Build
        );
    }
}

/// The build was told not to go on after the resolution.
#[derive(Debug, thiserror::Error)]
#[error("told not to go on after resolving the image")]
pub struct Stopped;
