//! A registry pull's layers, downloaded into the blob cache in the
//! background (after `builderd_oci::resolve_remote`), top layer first,
//! several at once, while the flatten reads each one as it arrives.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Instant;

use anyhow::Result;
use builderd_oci::{BlobCache, Digest, LayerInfo, Registry};

use crate::event::{self, Download, Event, Progress, Reporter, Stage};
use crate::layer_streams::{Blob, Feed};
use crate::units::human;

/// Parallel layer downloads.
const DOWNLOADS: usize = 4;

/// Brings a blob into the cache (unless it is there), telling `feed` where
/// its bytes are as they come. Answers whether it downloaded.
fn fetch(
    registry: &Registry<'_>,
    cache: &BlobCache,
    origin: &str,
    digest: &Digest,
    size: u64,
    feed: &Feed,
    progress: &dyn Fn(u64),
) -> Result<bool, builderd_oci::Error> {
    let fetched = cache.fetch(digest, size, origin, |partial| {
        feed.writing(partial);
        registry.download(digest, size, partial, &|done| {
            feed.progress(done);
            progress(done);
        })
    })?;
    feed.done(&cache.path(digest));
    Ok(fetched)
}

/// The layers' downloads, running (on a thread of `scope`, which the build
/// runs in, so the downloads can tell the build's reporter how they go).
pub struct Downloads<'scope> {
    feeds: Vec<Arc<Feed>>,
    /// The first download error, kept whole (the readers get only its text).
    failure: Arc<Mutex<Option<builderd_oci::Error>>>,
    /// Set when the build gave up: no more downloads start.
    stop: Arc<AtomicBool>,
    thread: ScopedJoinHandle<'scope, ()>,
}

impl<'scope> Downloads<'scope> {
    /// Starts downloading every layer not cached yet, telling `reporter` how
    /// each goes.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        registry: Arc<Registry<'env>>,
        cache: Arc<BlobCache>,
        origin: String,
        layers: Vec<LayerInfo>,
        reporter: &'env dyn Reporter,
    ) -> Downloads<'scope> {
        let feeds: Vec<Arc<Feed>> = layers.iter().map(|_| Arc::default()).collect();
        let failure = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (feeds, failure, stop) = (feeds.clone(), failure.clone(), stop.clone());
            std::thread::Builder::new()
                .name("layer-downloads".into())
                .spawn_scoped(scope, move || {
                    let pull = Pull {
                        registry: &registry,
                        cache: &cache,
                        origin: &origin,
                        layers: &layers,
                        feeds: &feeds,
                        failure: &failure,
                        stop: &stop,
                    };
                    pull.run(reporter)
                })
                .expect("spawning the download thread")
        };
        Downloads {
            feeds,
            failure,
            stop,
            thread,
        }
    }

    /// Layer `i`'s blob, read as it downloads. A blob being downloaded is
    /// verified by its download, and its reader ends only after that.
    pub fn open(&self, i: usize) -> Blob {
        Blob {
            verified: self.feeds[i].downloaded(),
            reader: Box::new(self.feeds[i].reader()),
        }
    }

    /// Waits until layer `i`'s blob is whole in the cache (for a reader
    /// that wants the file, not the stream).
    pub fn wait(&self, i: usize) -> Result<()> {
        self.feeds[i].wait_done().map_err(anyhow::Error::msg)
    }

    /// Waits for the downloads (all done once the flatten has read every
    /// layer to its end).
    pub fn finish(self) -> Result<()> {
        match self.settle() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// The build failed: starts no more downloads, lets those under way
    /// end (a blob whose digest is wrong is then deleted, not left as a
    /// partial file), and answers the download error, if one caused it.
    pub fn abandon(self) -> Option<builderd_oci::Error> {
        self.stop.store(true, Ordering::Relaxed);
        self.settle()
    }

    fn settle(self) -> Option<builderd_oci::Error> {
        if self.thread.join().is_err() {
            return Some(builderd_oci::Error::Registry(
                "the download thread panicked".into(),
            ));
        }
        self.failure.lock().unwrap().take()
    }
}

/// What the download workers share.
struct Pull<'a> {
    registry: &'a Registry<'a>,
    cache: &'a BlobCache,
    /// `registry/repository`, which a cached blob must have come from.
    origin: &'a str,
    layers: &'a [LayerInfo],
    feeds: &'a [Arc<Feed>],
    failure: &'a Mutex<Option<builderd_oci::Error>>,
    stop: &'a AtomicBool,
}

impl Pull<'_> {
    fn run(&self, reporter: &dyn Reporter) {
        let Pull {
            registry,
            cache,
            origin,
            layers,
            feeds,
            failure,
            stop,
        } = *self;
        // The flatten reads the top layer first: it is fetched first.
        let order: Vec<usize> = (0..layers.len()).rev().collect();
        let next = AtomicUsize::new(0);
        // Bytes fetched of each layer, for the progress events.
        let fetched: Vec<AtomicU64> = layers.iter().map(|_| AtomicU64::new(0)).collect();
        let total: u64 = layers.iter().map(|l| l.size).sum();
        let report = || {
            let done = fetched.iter().map(|f| f.load(Ordering::Relaxed)).sum();
            reporter.report(Event::Progress(Progress {
                step: "downloading".into(),
                done,
                total,
                files: 0,
            }));
        };
        let layer_event = |i: usize, done: u64, finished: bool| {
            reporter.report(Event::Download(Download {
                layer: i,
                digest: layers[i].digest.to_string(),
                done,
                total: layers[i].size,
                finished,
            }))
        };
        std::thread::scope(|scope| {
            for _ in 0..DOWNLOADS.min(layers.len()) {
                scope.spawn(|| {
                    let _guard = FailFeedsOnPanic(feeds);
                    while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let layer = &layers[i];
                        if failure.lock().unwrap().is_some() || stop.load(Ordering::Relaxed) {
                            feeds[i].failed("the pull stopped at an earlier error");
                            continue;
                        }
                        let started = Instant::now();
                        let progress = |done| {
                            layer_event(i, done, false);
                            fetched[i].store(done, Ordering::Relaxed);
                            report();
                        };
                        match fetch(
                            registry,
                            cache,
                            origin,
                            &layer.digest,
                            layer.size,
                            &feeds[i],
                            &progress,
                        ) {
                            Ok(was_fetched) => {
                                if was_fetched {
                                    reporter.report(Event::Pulled { bytes: layer.size });
                                }
                                fetched[i].store(layer.size, Ordering::Relaxed);
                                report();
                                layer_event(i, layer.size, true);
                                let what = if was_fetched {
                                    format!(
                                        "downloaded in {:.2} s",
                                        started.elapsed().as_secs_f64()
                                    )
                                } else {
                                    "cached".to_string()
                                };
                                event::info(
                                    reporter,
                                    format!(
                                        "layer {} ({}): {what}",
                                        layer.digest,
                                        human(layer.size)
                                    ),
                                );
                            }
                            Err(e) => {
                                // Every layer not whole yet fails now, so the flatten
                                // stops at once, whichever layer it is reading.
                                let why = e.to_string();
                                failure.lock().unwrap().get_or_insert(e);
                                for f in feeds {
                                    f.failed(&why);
                                }
                            }
                        }
                    }
                });
            }
        });
        // The flatten went on meanwhile; what is left of it is building.
        if failure.lock().unwrap().is_none() {
            reporter.report(Event::Stage(Stage::Building));
        }
    }
}

/// Fails every feed not whole yet when a download worker panics, so that no
/// reader waits for bytes that will never come.
struct FailFeedsOnPanic<'a>(&'a [Arc<Feed>]);

impl Drop for FailFeedsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for f in self.0 {
                f.failed("a layer download panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_panicking_download_fails_the_readers_instead_of_leaving_them_waiting() {
        let feeds: Vec<Arc<Feed>> = (0..2).map(|_| Arc::default()).collect();
        let mut reader = feeds[1].reader();
        let worker = {
            let feeds = feeds.clone();
            std::thread::spawn(move || {
                let _guard = FailFeedsOnPanic(&feeds);
                panic!("a download bug");
            })
        };
        assert!(worker.join().is_err());
        let err = reader.read(&mut [0u8; 8]).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}
