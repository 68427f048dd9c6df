//! Digest checks of the layer blobs a build reads unverified (from an OCI
//! layout, an archive or the blob cache), each on a thread of its own at
//! idle priority.
//!
//! The flatten keeps both cores busy decompressing; a blob's sha256 next to
//! it took a share of them. Checked on an idle-priority thread, with a read
//! of its own of the blob, the hash runs when a core has nothing else to do:
//! mostly while the image's own sha256 runs on one core after the flatten.
//! The build joins the checks before it keeps anything, so a blob that does
//! not match its digest still fails it and leaves no output.

use std::io::{self, Read};
use std::thread::JoinHandle;

use builderd_oci::{LayerInfo, VerifyingReader};

/// The checks under way.
#[derive(Default)]
pub struct BlobChecks {
    running: Vec<JoinHandle<io::Result<()>>>,
}

impl BlobChecks {
    /// Checks `blob` (read from its start) against `layer`'s digest and size.
    pub fn spawn(&mut self, layer: &LayerInfo, blob: Box<dyn Read + Send>) -> io::Result<()> {
        let mut verifying = VerifyingReader::new(blob, layer.digest.clone(), layer.size);
        let handle = std::thread::Builder::new()
            .name("blob-check".into())
            .spawn(move || {
                idle_priority();
                io::copy(&mut verifying, &mut io::sink()).map(drop)
            })?;
        self.running.push(handle);
        Ok(())
    }

    /// Waits for every check; the first failure (its message names the
    /// blob's digest).
    pub fn join(self) -> io::Result<()> {
        let mut first = Ok(());
        for handle in self.running {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a blob check panicked")));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

/// Runs this thread only when a core would otherwise idle. Should the
/// kernel refuse, the check runs at normal priority: slower builds, the
/// same result.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's (pid 0) policy; `param` outlives
    // the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
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
            let err = checks.join().unwrap_err().to_string();
            assert!(
                err.contains("digest") && err.contains(good.digest.as_str()),
                "{err}"
            );
        }
    }
}
