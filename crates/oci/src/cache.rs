//! The blob cache: content-addressed, on disk, shared by every build. Only
//! verified content is ever stored under its digest; downloads grow in a
//! `partial/` file (kept for resuming) and are renamed into place once their
//! digest is checked. Several processes may share one cache: a download
//! holds a lock on its blob, so a second build of the same blob waits for
//! the first and then finds it in place.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Digest, Error};

pub struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    /// The cache under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<BlobCache, Error> {
        for sub in ["blobs/sha256", "partial"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error::Io {
                what: format!("cache {}", dir.display()),
                source: e,
            })?;
        }
        Ok(BlobCache {
            dir: dir.to_path_buf(),
        })
    }

    /// `${XDG_CACHE_HOME:-~/.cache}/builderd`.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d).join("builderd"),
            None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/builderd"),
        }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Where the blobs are, each named by its sha256 in hex.
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    fn partial(&self, digest: &Digest) -> PathBuf {
        self.dir.join("partial").join(digest.hex())
    }

    /// Is the blob here (with the expected size)?
    pub fn has(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.path(digest)).is_ok_and(|m| m.len() == size)
    }

    /// Brings a blob into the cache unless it is there: `download` fills the
    /// partial file (resuming what it finds there) and must verify it; the
    /// result is then committed. Answers whether it downloaded. Other
    /// processes sharing the cache wait while one downloads a blob, then find
    /// it in place.
    pub fn fetch(
        &self,
        digest: &Digest,
        size: u64,
        download: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        if self.has(digest, size) {
            return Ok(false);
        }
        let _lock = self.lock(digest)?;
        if self.has(digest, size) {
            return Ok(false);
        }
        download(&self.partial(digest))?;
        self.commit(digest)?;
        Ok(true)
    }

    /// Waits until no other process is downloading this blob, and keeps it
    /// that way until the lock is dropped.
    fn lock(&self, digest: &Digest) -> Result<BlobLock, Error> {
        let path = self
            .dir
            .join("partial")
            .join(format!("{}.lock", digest.hex()));
        let io = |e: std::io::Error| Error::Io {
            what: format!("cache: locking blob {digest}"),
            source: e,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this function owns.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io(e));
            }
        }
        Ok(BlobLock { _file: file })
    }

    /// Moves a verified download into place.
    fn commit(&self, digest: &Digest) -> Result<(), Error> {
        std::fs::rename(self.partial(digest), self.path(digest)).map_err(|e| Error::Io {
            what: format!("cache: storing blob {digest}"),
            source: e,
        })
    }

    /// Drops a cached blob found not to match its digest, so that the next
    /// build downloads it again.
    pub fn remove(&self, digest: &Digest) -> Result<(), Error> {
        let _lock = self.lock(digest)?;
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                what: format!("cache: removing blob {digest}"),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File, Error> {
        File::open(self.path(digest)).map_err(|e| Error::Io {
            what: format!("cache: blob {digest}"),
            source: e,
        })
    }
}

/// A blob's download lock; released when dropped (the lock file stays, so
/// no process can lock a file another has just unlinked).
struct BlobLock {
    _file: File,
}

impl crate::BlobStore for BlobCache {
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn std::io::Read + Send>, Error> {
        Ok(Box::new(BlobCache::open_blob(self, digest)?))
    }
}
