//! The blob cache: content-addressed, on disk, shared by every build. Only
//! verified content is ever stored under its digest; downloads grow in a
//! `partial/` file (kept for resuming) and are renamed into place once their
//! digest is checked. Several processes may share one cache: a download
//! holds a lock on its blob, so a second build of the same blob waits for
//! the first and then finds it in place.
//!
//! A blob is reused only for an image from a repository it was downloaded
//! from (`origins/HEX` lists them, `registry/repository` a line): a digest
//! is no secret, and a manifest of a tenant's own naming another tenant's
//! private layer must not get that layer from here. A blob offered by a new
//! repository is downloaded from it (which proves the repository has it),
//! then that repository is added to its origins.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Digest, Error};

pub struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    /// The cache under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<BlobCache, Error> {
        for sub in ["blobs/sha256", "partial", "origins"] {
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

    fn origins_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("origins").join(digest.hex())
    }

    /// Is the blob here (with the expected size), downloaded from `origin`
    /// (`registry/repository`) at some time?
    pub fn has(&self, digest: &Digest, size: u64, origin: &str) -> bool {
        std::fs::metadata(self.path(digest)).is_ok_and(|m| m.len() == size)
            && std::fs::read_to_string(self.origins_path(digest))
                .is_ok_and(|o| o.lines().any(|l| l == origin))
    }

    /// Brings a blob of `origin`'s (`registry/repository`) into the cache
    /// unless it is there from that origin: `download` fills the partial
    /// file (resuming what it finds there) and must verify it; the result is
    /// then committed. Answers whether it downloaded. Other processes sharing
    /// the cache wait while one downloads a blob, then find it in place.
    pub fn fetch(
        &self,
        digest: &Digest,
        size: u64,
        origin: &str,
        download: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        if self.has(digest, size, origin) {
            return Ok(false);
        }
        let _lock = self.lock(digest)?;
        if self.has(digest, size, origin) {
            return Ok(false);
        }
        download(&self.partial(digest))?;
        self.commit(digest)?;
        self.add_origin(digest, origin)?;
        Ok(true)
    }

    /// Records that `origin` served this blob (under its lock).
    fn add_origin(&self, digest: &Digest, origin: &str) -> Result<(), Error> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.origins_path(digest))
            .and_then(|mut f| f.write_all(format!("{origin}\n").as_bytes()).map(|()| f))
            .map_err(|e| Error::Io {
                what: format!("cache: recording where blob {digest} came from"),
                source: e,
            })?;
        f.flush().map_err(|e| Error::Io {
            what: format!("cache: blob {digest}"),
            source: e,
        })
    }

    /// Waits until no other process is downloading this blob, and keeps it
    /// that way until the lock is dropped. The lock file goes with the lock
    /// (no `.lock` file stays behind): a waiter that got the lock of a file
    /// just unlinked sees that it is no longer the one at the path, and
    /// tries again.
    fn lock(&self, digest: &Digest) -> Result<BlobLock, Error> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        let path = self
            .dir
            .join("partial")
            .join(format!("{}.lock", digest.hex()));
        let io = |e: std::io::Error| Error::Io {
            what: format!("cache: locking blob {digest}"),
            source: e,
        };
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            // SAFETY: flock on a descriptor this function owns.
            while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(io(e));
                }
            }
            let held = file.metadata().map_err(io)?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(BlobLock { _file: file, path })
                }
                // Unlinked (or replaced) by the holder before us: again.
                _ => continue,
            }
        }
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
        for path in [self.path(digest), self.origins_path(digest)] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io {
                        what: format!("cache: removing blob {digest}"),
                        source: e,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File, Error> {
        File::open(self.path(digest)).map_err(|e| Error::Io {
            what: format!("cache: blob {digest}"),
            source: e,
        })
    }
}

/// A blob's download lock; released when dropped, its file unlinked first
/// (while still held, so no one can take it between the two).
struct BlobLock {
    /// Closed (so unlocked) after `drop` below has unlinked it.
    _file: File,
    path: PathBuf,
}

impl Drop for BlobLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl crate::BlobStore for BlobCache {
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn std::io::Read + Send>, Error> {
        Ok(Box::new(BlobCache::open_blob(self, digest)?))
    }

    fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        Some(self.path(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_reused_only_for_a_repository_that_served_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let content = b"private layer";
        let digest = Digest::of(content);
        let size = content.len() as u64;
        let write = |partial: &Path| {
            std::fs::write(partial, content).map_err(|e| Error::Io {
                what: "test".into(),
                source: e,
            })
        };
        assert!(cache.fetch(&digest, size, "reg.a/private", write).unwrap());
        // The same repository: no download.
        let never = |_: &Path| -> Result<(), Error> { panic!("downloaded again") };
        assert!(!cache.fetch(&digest, size, "reg.a/private", never).unwrap());
        // Another repository naming the same digest must download it itself,
        // and a failed download leaves that repository unrecorded.
        let refused = |_: &Path| -> Result<(), Error> { Err(Error::NotFound("404".into())) };
        assert!(cache.fetch(&digest, size, "evil.b/x", refused).is_err());
        assert!(!cache.has(&digest, size, "evil.b/x"));
        assert!(cache.has(&digest, size, "reg.a/private"));
        // One that has it is recorded after its download.
        assert!(cache.fetch(&digest, size, "reg.a/mirror", write).unwrap());
        assert!(cache.has(&digest, size, "reg.a/mirror"));
        cache.remove(&digest).unwrap();
        assert!(!cache.has(&digest, size, "reg.a/private"));
        assert!(!dir.path().join("origins").join(digest.hex()).exists());
        // No lock file stays behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("partial"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn the_lock_excludes_across_unlinks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = std::sync::Arc::new(BlobCache::open(dir.path()).unwrap());
        let digest = Digest::of(b"x");
        let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, digest, inside) = (cache.clone(), digest.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _lock = cache.lock(&digest).unwrap();
                        let n = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(n, 0, "two holders at once");
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
