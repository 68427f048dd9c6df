//! The compressed copy of an image (`OUT.gz`, `OUT.zst`), written atomically,
//! with the sha256 of the compressed bytes.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use crate::output::Pending;
use crate::request::CopyFormat;

/// `rootfs.ext4` → `rootfs.ext4.gz` or `.zst`; `None` for no compression.
pub fn path_for(output: &Path, kind: CopyFormat) -> Option<PathBuf> {
    let ext = match kind {
        CopyFormat::None => return None,
        CopyFormat::Gzip => ".gz",
        CopyFormat::Zstd => ".zst",
    };
    let mut name = output.as_os_str().to_os_string();
    name.push(ext);
    Some(PathBuf::from(name))
}

/// Passes bytes on while hashing and counting them.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses `image` into `pending` (not yet committed); answers the
/// compressed file's sha256 and size.
pub fn compress(image: &Path, pending: &Pending, kind: CopyFormat) -> Result<(String, u64)> {
    let mut src = crate::checksum::read_back(image)?;
    let out = Hashing {
        inner: BufWriter::with_capacity(1 << 20, pending.file()?),
        hash: Sha256::new(),
        bytes: 0,
    };
    let mut out = match kind {
        CopyFormat::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            std::io::copy(&mut src, &mut gz).context("compressing the image")?;
            gz.finish()?
        }
        CopyFormat::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(out, 3)?;
            // Several threads: the default level is fast enough that one core
            // would be the limit.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            z.multithread(threads)?;
            std::io::copy(&mut src, &mut z).context("compressing the image")?;
            z.finish()?
        }
        CopyFormat::None => unreachable!("no compressed copy is asked for"),
    };
    out.flush()?;
    out.inner
        .get_ref()
        .sync_all()
        .context("flushing the compressed image to disk")?;
    let sha = builderd_oci::Digest::of_hasher(out.hash).hex().to_string();
    Ok((sha, out.bytes))
}
