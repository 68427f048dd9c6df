//! The layers of an image as the flatten reads them, each a decompressed tar
//! stream whose blob is checked against its digest and size: by its
//! download as it arrives, or else by a [`BlobChecks`] thread that reads the
//! blob once more at idle priority.
//!
//! Each stream decompresses on a thread of its own. The flatten reads the
//! layers side by side (its lanes), so every layer decompresses at once.
//!
//! A registry pull need not finish before the flatten starts: a layer being
//! downloaded is read as it grows (`Feed`), so downloading, decompressing
//! and writing overlap.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use builderd_flatten::Layer;
use builderd_import::{decompress, ReadAhead};
use builderd_oci::{Compression, LayerInfo};

use crate::blob_checks::BlobChecks;

/// Megabytes of decompressed output a layer has in flight.
const DEPTH: usize = 4;
const READ_BUFFER: usize = 1 << 20;

/// A layer's blob, as stored (compressed).
pub struct Blob {
    pub reader: Box<dyn Read + Send>,
    /// The reader ends only once the blob's size and digest are verified
    /// (a download into the cache checks them as it writes): no second
    /// check is needed.
    pub verified: bool,
}

/// Opens a layer's blob; each call reads it from its start.
pub type OpenBlob<'a> = dyn Fn(usize) -> io::Result<Blob> + Sync + 'a;

pub struct Streams<'a> {
    layers: &'a [LayerInfo],
    open_blob: &'a OpenBlob<'a>,
    /// Blob bytes read so far, over all layers (the build's progress).
    read: Arc<AtomicU64>,
    checks: Mutex<BlobChecks>,
    /// Layers opened before: a blob is checked once, and counted once in
    /// the progress, however often its layer is read (a package database
    /// read before the flatten, a hard link's content read again).
    opened: Mutex<std::collections::HashSet<usize>>,
}

impl<'a> Streams<'a> {
    /// `read` counts blob bytes as they are read.
    pub fn new(
        layers: &'a [LayerInfo],
        open_blob: &'a OpenBlob<'a>,
        read: Arc<AtomicU64>,
    ) -> Streams<'a> {
        Streams {
            layers,
            open_blob,
            read,
            checks: Mutex::default(),
            opened: Mutex::default(),
        }
    }

    /// The digest checks of the blobs opened so far, for the caller to join
    /// before it keeps what the flatten made.
    pub fn take_checks(&self) -> BlobChecks {
        std::mem::take(&mut self.checks.lock().unwrap())
    }

    /// The layers for `builderd_flatten::flatten`.
    pub fn layers(&'a self) -> Vec<Layer<'a>> {
        (0..self.layers.len())
            .map(|i| Layer {
                name: self.layers[i].digest.to_string(),
                size: self.layers[i].size,
                open: Box::new(move || self.open(i)),
                adjust: None,
            })
            .collect()
    }

    /// Layer `i`'s tar stream.
    fn open(&self, i: usize) -> io::Result<Box<dyn BufRead + Send>> {
        let info = &self.layers[i];
        let blob = (self.open_blob)(i)?;
        let again = !self.opened.lock().unwrap().insert(i);
        let counted = Counted {
            inner: blob.reader,
            read: (!again).then(|| self.read.clone()),
        };
        let checked: Box<dyn Read + Send> = if blob.verified {
            Box::new(counted)
        } else if again {
            // Checked (or being checked) since its first opening; still
            // never read past the size the manifest gives.
            Box::new(counted.take(info.size))
        } else {
            let again = (self.open_blob)(i)?;
            self.checks.lock().unwrap().spawn(info, again.reader)?;
            // Never past the size the manifest gives, whatever the file holds.
            Box::new(counted.take(info.size))
        };
        let blob = BufReader::with_capacity(READ_BUFFER, checked);
        // As the manifest says; each layer inflates on a thread of its own.
        let kind = match info.compression {
            Compression::None => return Ok(Box::new(blob)),
            Compression::Gzip => decompress::Compression::Gzip,
            Compression::Zstd => decompress::Compression::Zstd,
        };
        Ok(Box::new(ReadAhead::with_depth(
            decompress::decoder(blob, kind)?,
            DEPTH,
            "layer-inflate",
        )))
    }
}

/// Counts layer blob bytes as they are read (the first reading of each).
struct Counted<R> {
    inner: R,
    read: Option<Arc<AtomicU64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(read) = &self.read {
            read.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// A blob on its way into the cache, told by its download and read while it
/// grows.
#[derive(Default)]
pub struct Feed {
    state: Mutex<FeedState>,
    changed: Condvar,
}

#[derive(Default)]
struct FeedState {
    /// Where the bytes are: the partial file, then the cached blob.
    path: Option<PathBuf>,
    /// Bytes in the file so far (a download that starts over goes back to 0;
    /// the bytes are the same, the digest says so).
    written: u64,
    done: bool,
    /// A download (which verifies what it writes) brings the blob, as
    /// opposed to finding it in the cache.
    downloaded: bool,
    failed: Option<String>,
    /// Counts the changes, so a reader can wait for the next one.
    changes: u64,
}

impl Feed {
    /// The download writes (or resumes) into `path`.
    pub fn writing(&self, path: &Path) {
        self.update(|s| {
            s.path = Some(path.to_path_buf());
            s.written = 0;
            s.downloaded = true;
        });
    }

    pub fn progress(&self, written: u64) {
        self.update(|s| s.written = written);
    }

    /// The blob is whole, verified, at `path`.
    pub fn done(&self, path: &Path) {
        self.update(|s| {
            s.path = Some(path.to_path_buf());
            s.done = true;
        });
    }

    /// The pull failed: readers of a blob not whole yet get `why`.
    pub fn failed(&self, why: &str) {
        self.update(|s| {
            if !s.done {
                s.failed = Some(why.to_string());
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut FeedState)) {
        let mut s = self.state.lock().unwrap();
        f(&mut s);
        s.changes += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// Waits until the blob is found in the cache or its download starts
    /// (or the pull fails); answers whether a download brings it, that is,
    /// whether its reader ends only on a verified blob.
    pub fn downloaded(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        while s.path.is_none() && s.failed.is_none() {
            s = self.changed.wait(s).unwrap();
        }
        s.downloaded
    }

    /// Waits until the blob is whole in the cache; Err: why the pull failed.
    pub fn wait_done(&self) -> Result<(), String> {
        let mut s = self.state.lock().unwrap();
        loop {
            if s.done {
                return Ok(());
            }
            if let Some(why) = &s.failed {
                return Err(why.clone());
            }
            s = self.changed.wait(s).unwrap();
        }
    }

    /// Reads the blob from its start, waiting for bytes not written yet.
    pub fn reader(self: &Arc<Self>) -> FeedReader {
        FeedReader {
            feed: self.clone(),
            file: None,
            pos: 0,
            stale: None,
        }
    }
}

pub struct FeedReader {
    feed: Arc<Feed>,
    file: Option<File>,
    pos: u64,
    /// The change after which the file held less than the feed said (a
    /// download starting over truncates it before it says so): wait for
    /// the next one.
    stale: Option<u64>,
}

impl Read for FeedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (path, limit, changes) = {
                let mut s = self.feed.state.lock().unwrap();
                loop {
                    if let Some(why) = &s.failed {
                        return Err(io::Error::other(why.clone()));
                    }
                    match &s.path {
                        _ if self.stale == Some(s.changes) => {}
                        Some(p) if s.done => break (p.clone(), None, s.changes),
                        Some(p) if s.written > self.pos => {
                            break (p.clone(), Some(s.written), s.changes)
                        }
                        _ => {}
                    }
                    s = self.feed.changed.wait(s).unwrap();
                }
            };
            // The file opened first stays open: a partial file renamed into
            // the cache is still the same file.
            if self.file.is_none() {
                match File::open(&path) {
                    Ok(f) => self.file = Some(f),
                    // Renamed into the cache between the look at the feed
                    // and the open: the feed says where to next.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.stale = Some(changes);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let file = self.file.as_ref().expect("opened above");
            let want = match limit {
                Some(l) => buf.len().min((l - self.pos) as usize),
                None => buf.len(),
            };
            let n = file.read_at(&mut buf[..want], self.pos)?;
            if n == 0 && limit.is_some() {
                self.stale = Some(changes);
                continue;
            }
            self.stale = None;
            self.pos += n as u64;
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tells `feed` something 50 ms from now, on a thread of its own (the
    /// download, as a reader already waiting on the feed sees it).
    fn later(
        feed: &Arc<Feed>,
        tell: impl FnOnce(&Feed) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let feed = feed.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            tell(&feed);
        })
    }

    #[test]
    fn a_feed_is_read_as_it_grows_and_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        let feed = Arc::new(Feed::default());
        let mut reader = feed.reader();
        let writer = {
            let feed = feed.clone();
            let partial = partial.clone();
            std::thread::spawn(move || {
                feed.writing(&partial);
                std::fs::write(&partial, b"hello ").unwrap();
                feed.progress(6);
                std::thread::sleep(std::time::Duration::from_millis(50));
                // Started over (no resume), then longer than before.
                feed.writing(&partial);
                std::fs::write(&partial, b"hello world").unwrap();
                feed.progress(11);
                let done = partial.with_extension("done");
                std::fs::rename(&partial, &done).unwrap();
                feed.done(&done);
            })
        };
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        writer.join().unwrap();
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn a_file_truncated_before_the_feed_says_so_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        let feed = Arc::new(Feed::default());
        feed.writing(&partial);
        std::fs::write(&partial, b"hello world").unwrap();
        feed.progress(11);
        let mut reader = feed.reader();
        let mut head = [0u8; 5];
        reader.read_exact(&mut head).unwrap();
        // The download starts over: the file is cut before the feed hears of it.
        std::fs::write(&partial, b"").unwrap();
        let writer = {
            let partial = partial.clone();
            later(&feed, move |feed| {
                feed.progress(0);
                std::fs::write(&partial, b"hello world").unwrap();
                feed.progress(11);
                feed.done(&partial);
            })
        };
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        writer.join().unwrap();
        assert_eq!((&head[..], &rest[..]), (&b"hello"[..], &b" world"[..]));
    }

    #[test]
    fn a_blob_renamed_into_the_cache_before_the_reader_opens_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (partial, done) = (dir.path().join("partial"), dir.path().join("done"));
        let feed = Arc::new(Feed::default());
        feed.writing(&partial);
        std::fs::write(&partial, b"whole").unwrap();
        feed.progress(5);
        // Renamed, and the feed not told yet: the reader finds no file.
        std::fs::rename(&partial, &done).unwrap();
        let mut reader = feed.reader();
        let teller = {
            let done = done.clone();
            later(&feed, move |feed| feed.done(&done))
        };
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        teller.join().unwrap();
        assert_eq!(out, b"whole");
    }

    #[test]
    fn only_a_blob_brought_by_a_download_counts_as_verified_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let cached = Arc::new(Feed::default());
        let path = dir.path().join("cached");
        let teller = later(&cached, move |feed| feed.done(&path));
        // Waits for the pull to say where the blob comes from.
        assert!(!cached.downloaded());
        teller.join().unwrap();
        let fetched = Feed::default();
        fetched.writing(&dir.path().join("partial"));
        fetched.done(&dir.path().join("blob"));
        assert!(fetched.downloaded());
        let failed = Feed::default();
        failed.failed("stopped");
        assert!(!failed.downloaded());
    }

    #[test]
    fn a_failed_download_fails_the_reader() {
        let feed = Arc::new(Feed::default());
        let mut reader = feed.reader();
        feed.failed("blob sha256:ab: 404");
        let err = reader.read(&mut [0u8; 8]).unwrap_err();
        assert!(err.to_string().contains("404"));
    }
}
