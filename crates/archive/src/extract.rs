//! One extraction: the archive's format told and checked, its sha256
//! taken, and its entries read by the reader for its format into the
//! checked writing of `entries`, beneath a directory or as a tar stream.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::beneath::Beneath;
use crate::dest::{Dest, TarOut};
use crate::entries::{Extracted, Extraction};
use crate::limits::Limits;
use crate::{Error, Format};

/// What an extraction is asked for.
pub struct Options<'a> {
    /// What the request says the archive is; it must agree with its bytes.
    pub declared: Option<Format>,
    pub limits: Limits,
    /// Told what was left out or changed (a device dropped, a setuid bit
    /// cleared), one line each.
    pub notice: &'a (dyn Fn(String) + Sync),
}

/// Extracts the archive at `archive` into `dest`, an empty directory that
/// nothing else writes to meanwhile. On an error `dest` holds part of the
/// archive: the caller removes it.
pub fn extract(archive: &Path, dest: &Path, opts: &Options<'_>) -> Result<Extracted, Error> {
    let to = Beneath::open(dest).map_err(Error::Write)?;
    read(archive, None, Box::new(to), opts)
}

/// Reads the archive at `archive`, checked as [`extract`] checks it, and
/// writes its entries as a tar stream into `out`, under `at` (a relative
/// path: "app"), instead of to disk: owned by root, directories at the end
/// with their final modes and times. `sha256` is the archive's, taken
/// before ([`sha256`]). Files that may be zips are copied into `scratch`
/// (unnamed, gone when checked) for the nested-zip check. On an error the
/// stream stops short: whoever reads it must take this function's answer,
/// not the stream's end, as the verdict.
pub fn stream(
    archive: &Path,
    sha256: String,
    out: impl Write,
    at: &str,
    scratch: &Path,
    opts: &Options<'_>,
) -> Result<Extracted, Error> {
    read(
        archive,
        Some(sha256),
        Box::new(TarOut::new(out, at, scratch)),
        opts,
    )
}

/// The sha256 of the file at `path`, as hex.
pub fn sha256(path: &Path) -> io::Result<String> {
    hash(&File::open(path)?)
}

fn read(
    archive: &Path,
    sha256: Option<String>,
    to: Box<dyn Dest + '_>,
    opts: &Options<'_>,
) -> Result<Extracted, Error> {
    let mut file = File::open(archive)
        .map_err(|e| Error::Archive(format!("opening {}: {e}", archive.display())))?;
    let size = file
        .metadata()
        .map_err(|e| Error::Archive(format!("reading {}: {e}", archive.display())))?
        .len();
    let mut first = [0u8; 512];
    let n = read_up_to(&mut file, &mut first)
        .map_err(|e| Error::Archive(format!("reading {}: {e}", archive.display())))?;
    let format = Format::of(&first[..n], opts.declared)?;
    let sha256 = match sha256 {
        Some(known) => known,
        None => hash(&file)
            .map_err(|e| Error::Archive(format!("reading {}: {e}", archive.display())))?,
    };
    let mut x = Extraction::new(to, opts.limits, opts.notice, format, sha256, size)?;
    match format {
        Format::Zip => crate::zip_entries::read(file, size, &mut x)?,
        tar => crate::tar_entries::read(file, tar, &mut x)?,
    }
    x.finish()
}

/// Reads what `file` holds from its start into `buf`, up to its length.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The archive's sha256, read apart from the extraction (a zip is read out
/// of order).
fn hash(file: &File) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        match file.read_at(&mut buf, at)? {
            0 => break,
            n => {
                h.update(&buf[..n]);
                at += n as u64;
            }
        }
    }
    Ok(format!("{:x}", h.finalize()))
}
