//! Digest checks of the layer blobs a build reads unverified (from an OCI
//! layout, an archive or the blob cache), each on a thread of its own at
//! idle priority.
//!
//! The flatten keeps both cores busy decompressing; a blob's sha256 next to
//! it took a share of them. Checked on an idle-priority thread, with a read
//! of its own of the blob, the hash runs when a core has nothing else to do:
//! mostly while the image's own sha256 runs on one core after the flatten.
//! The build joins the checks before it keeps anything, so a blob that does
//! not match its digest still fails it and leaves no output. Joining puts
//! the checks back at normal priority first: on a machine kept busy by
//! other builds, an idle-priority thread would hardly ever run.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use builderd_oci::{Digest, LayerInfo, VerifyingReader};

/// The checks under way.
#[derive(Default)]
pub struct BlobChecks {
    running: Vec<Check>,
}

struct Check {
    digest: Digest,
    thread: JoinHandle<io::Result<()>>,
    priority: Arc<Mutex<Priority>>,
}

/// A check that failed: which blob, and why.
#[derive(Debug)]
pub struct Failed {
    pub digest: Digest,
    pub error: io::Error,
}

impl Failed {
    /// The blob's bytes are not what its digest says (as opposed to a
    /// failure to read them).
    pub fn mismatch(&self) -> bool {
        self.error.kind() == io::ErrorKind::InvalidData
    }
}

/// A check thread's priority, settled under its lock so that the thread
/// lowering it and the join raising it cannot cross.
#[derive(Default)]
struct Priority {
    /// The thread's id once it runs at idle priority.
    idle_tid: Option<libc::pid_t>,
    /// The join came: the thread stays at (or goes back to) normal priority.
    hurried: bool,
}

impl BlobChecks {
    /// Checks `blob` (read from its start) against `layer`'s digest and size.
    pub fn spawn(&mut self, layer: &LayerInfo, blob: Box<dyn Read + Send>) -> io::Result<()> {
        let mut verifying = VerifyingReader::new(blob, layer.digest.clone(), layer.size);
        let priority = Arc::new(Mutex::new(Priority::default()));
        let mine = priority.clone();
        let thread = std::thread::Builder::new()
            .name("blob-check".into())
            .spawn(move || {
                {
                    let mut p = mine.lock().unwrap();
                    if !p.hurried && set_policy(0, libc::SCHED_IDLE) {
                        // SAFETY: gettid has no preconditions.
                        p.idle_tid = Some(unsafe { libc::gettid() });
                    }
                }
                let checked = io::copy(&mut verifying, &mut io::sink()).map(drop);
                // Its id may go to another thread once this one ends.
                mine.lock().unwrap().idle_tid = None;
                checked
            })?;
        self.running.push(Check {
            digest: layer.digest.clone(),
            thread,
            priority,
        });
        Ok(())
    }

    /// Waits for every check, at normal priority; the first failure (its
    /// message names the blob's digest).
    pub fn join(self) -> Result<(), Failed> {
        for check in &self.running {
            let mut p = check.priority.lock().unwrap();
            p.hurried = true;
            if let Some(tid) = p.idle_tid.take() {
                set_policy(tid, libc::SCHED_OTHER);
            }
        }
        let mut first = Ok(());
        for check in self.running {
            let result = check
                .thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a blob check panicked")));
            if let (Ok(()), Err(error)) = (&first, result) {
                first = Err(Failed {
                    digest: check.digest,
                    error,
                });
            }
        }
        first
    }
}

/// Sets thread `tid`'s (0: this thread's) scheduling policy; whether the
/// kernel took it. Should it refuse, a check runs at the priority it has:
/// slower builds, the same result.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call. A `tid` given here is a live
    // check's: a check clears its id, under the lock `join` holds, before
    // it ends.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use builderd_oci::{Compression, Digest};

    fn layer(content: &[u8]) -> LayerInfo {
        LayerInfo {
            digest: Digest::of(content),
            size: content.len() as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            compression: Compression::None,
        }
    }

    #[test]
    fn a_matching_blob_passes_and_a_changed_or_short_one_names_its_digest() {
        let good = layer(b"layer bytes");
        let mut checks = BlobChecks::default();
        checks
            .spawn(&good, Box::new(io::Cursor::new(b"layer bytes".to_vec())))
            .unwrap();
        checks.join().unwrap();

        for wrong in [&b"layer bytez"[..], &b"layer"[..]] {
            let mut checks = BlobChecks::default();
            checks
                .spawn(&good, Box::new(io::Cursor::new(b"layer bytes".to_vec())))
                .unwrap();
            checks
                .spawn(&good, Box::new(io::Cursor::new(wrong.to_vec())))
                .unwrap();
            let failed = checks.join().unwrap_err();
            let err = failed.error.to_string();
            assert!(
                err.contains("digest") && err.contains(good.digest.as_str()),
                "{err}"
            );
            assert!(failed.digest == good.digest && failed.mismatch());
        }
    }

    /// A blob read one byte at a time, slowly, noting the policy of the
    /// thread that reads it.
    struct Watched {
        left: &'static [u8],
        policies: Arc<Mutex<Vec<libc::c_int>>>,
    }

    impl Read for Watched {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // SAFETY: asks for this thread's policy; no memory is involved.
            let policy = unsafe { libc::sched_getscheduler(0) };
            self.policies.lock().unwrap().push(policy);
            std::thread::sleep(std::time::Duration::from_millis(20));
            let Some((&b, rest)) = self.left.split_first() else {
                return Ok(0);
            };
            buf[0] = b;
            self.left = rest;
            Ok(1)
        }
    }

    #[test]
    fn a_check_runs_at_idle_priority_until_it_is_joined() {
        let content = b"ten bytes!";
        let policies = Arc::new(Mutex::new(Vec::new()));
        let mut checks = BlobChecks::default();
        let blob = Watched {
            left: content,
            policies: policies.clone(),
        };
        checks.spawn(&layer(content), Box::new(blob)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(60));
        checks.join().unwrap();
        let seen = policies.lock().unwrap().clone();
        assert_eq!(seen.first(), Some(&libc::SCHED_IDLE), "{seen:?}");
        assert_eq!(seen.last(), Some(&libc::SCHED_OTHER), "{seen:?}");
    }
}
