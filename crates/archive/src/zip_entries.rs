//! A zip's entries, by the `zip` crate (zip64, data descriptors; stored and
//! deflate): its entry count read from the end record before the central
//! directory is (so a million-entry zip costs no memory to refuse); local
//! and central headers made to agree, with no entry overlapping another (a
//! non-recursive bomb's trick) and none hidden between them; encrypted
//! entries and other methods refused by name; each entry's data counted as
//! it is read and held to the size its header declares, and to its CRC-32.

use std::fs::File;
use std::io::{self, BufReader, Read};

use zip::{CompressionMethod, ZipArchive};

use crate::entries::{Counted, Extraction, Stamp};
use crate::zip_end::declared_entries;
use crate::Error;

/// A symlink's target, at most (Linux's `PATH_MAX`).
const MAX_LINK: u64 = 4096;

pub(crate) fn read(file: File, size: u64, x: &mut Extraction<'_>) -> Result<(), Error> {
    let declared = declared_entries(&file, size)?;
    if declared > x.budget.limits.max_entries {
        return Err(Error::limit(
            "max_entries",
            format!(
                "{} entries; its end record declares {declared}",
                x.budget.limits.max_entries
            ),
            None,
        ));
    }
    let counted = Counted {
        inner: file,
        read: x.read.clone(),
    };
    // Small: each entry is read after a seek, which empties the buffer, and
    // most entries are small (reads larger than it bypass it). Tried on a
    // 200 MB site of 20,000 entries: 1 MiB made the read 4 times slower
    // than 16 KiB.
    let mut zip = ZipArchive::new(BufReader::with_capacity(16 << 10, counted))
        .map_err(|e| Error::Archive(format!("not a zip builderd can read: {e}")))?;
    zip.validate_header_consistency()
        .map_err(|e| Error::Archive(format!("the zip's headers do not agree: {e}")))?;
    // The crate may have read another end record than the last (when the
    // last does not parse): the count checked must be the one it reads.
    if zip.len() as u64 != declared {
        return Err(Error::Archive(format!(
            "the zip's end records disagree: the last declares {declared} entries, its central \
             directory holds {}",
            zip.len()
        )));
    }
    for i in 0..zip.len() {
        let (raw, info) = {
            let entry = zip
                .by_index_raw(i)
                .map_err(|e| Error::Archive(format!("the zip's entry {i}: {e}")))?;
            (entry.name_raw().to_vec(), Info::of(&entry))
        };
        let Some(path) = x.name(&raw)? else {
            continue;
        };
        if info.encrypted {
            return Err(Error::entry(
                &raw,
                "is encrypted: builderd takes no encrypted entries",
            ));
        }
        if !matches!(
            info.method,
            CompressionMethod::Stored | CompressionMethod::Deflated
        ) {
            return Err(Error::entry(
                &raw,
                format!(
                    "is compressed with {:?}: builderd takes stored and deflate entries only",
                    info.method
                ),
            ));
        }
        let stamp = Stamp {
            mode: info.mode.unwrap_or(if info.is_dir { 0o755 } else { 0o644 }) & 0o7777,
            secs: info.mtime,
            nanos: 0,
        };
        let failed = |e: io::Error| data_error(&raw, info.size, e);
        match info.kind() {
            ZipKind::Symlink => {
                if info.size > MAX_LINK {
                    return Err(Error::entry(
                        &raw,
                        "is a symlink whose target is over 4096 bytes",
                    ));
                }
                let mut target = Vec::new();
                zip.by_index(i)
                    .map_err(|e| Error::entry(&raw, format!("cannot be read: {e}")))?
                    .take(MAX_LINK)
                    .read_to_end(&mut target)
                    .map_err(failed)?;
                x.symlink(path, &target, stamp)?;
            }
            ZipKind::Dir => x.dir(path, stamp)?,
            ZipKind::Other(what) => x.left_out(&path, what),
            ZipKind::File => x.file(path, stamp, info.size, |sink| {
                let mut data = zip
                    .by_index(i)
                    .map_err(|e| Error::entry(&raw, format!("cannot be read: {e}")))?;
                sink.copy_from(&mut data, &failed)
            })?,
        }
    }
    Ok(())
}

/// What an entry is, as the extraction takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ZipKind {
    File,
    Dir,
    Symlink,
    /// Left out: a device, fifo or socket.
    Other(&'static str),
}

/// What the central directory says of an entry.
pub(crate) struct Info {
    encrypted: bool,
    method: CompressionMethod,
    /// The Unix mode, with its file type, when a Unix producer gave one.
    mode: Option<u32>,
    is_dir: bool,
    pub size: u64,
    mtime: i64,
}

impl Info {
    /// By its Unix mode's file type first (a Unix producer's), then by the
    /// name's trailing slash.
    pub(crate) fn kind(&self) -> ZipKind {
        match self.mode.map(|m| m & 0o170000) {
            Some(0o120000) => ZipKind::Symlink,
            Some(0o040000) => ZipKind::Dir,
            _ if self.is_dir => ZipKind::Dir,
            Some(0o020000) => ZipKind::Other("character device"),
            Some(0o060000) => ZipKind::Other("block device"),
            Some(0o010000) => ZipKind::Other("fifo"),
            Some(0o140000) => ZipKind::Other("socket"),
            _ => ZipKind::File,
        }
    }

    pub(crate) fn of<R: Read>(entry: &zip::read::ZipFile<'_, R>) -> Info {
        let extended = entry.extra_data_fields().find_map(|f| match f {
            zip::extra_fields::ExtraField::ExtendedTimestamp(t) => t.mod_time(),
            _ => None,
        });
        let mtime = match (extended, entry.last_modified()) {
            (Some(t), _) => t as i64,
            // DOS times have no zone: read as UTC.
            (None, Some(t)) => unix_secs(
                t.year().into(),
                t.month().into(),
                t.day().into(),
                t.hour().into(),
                t.minute().into(),
                t.second().into(),
            ),
            (None, None) => 0,
        };
        Info {
            encrypted: entry.encrypted(),
            method: entry.compression(),
            // The crate makes up a mode for other systems' entries (0664,
            // 0775); those get builderd's own defaults instead.
            mode: match entry.system() {
                zip::System::Unix => entry.unix_mode(),
                _ => None,
            },
            is_dir: entry.is_dir(),
            size: entry.size(),
            mtime,
        }
    }
}

/// An entry's data failing to read: its CRC-32, or the stream itself.
fn data_error(raw: &[u8], declared: u64, e: io::Error) -> Error {
    let text = e.to_string();
    if text.contains("declared uncompressed size") {
        return Error::entry(
            raw,
            format!("holds more than the {declared} bytes its header declares"),
        );
    }
    if text.contains("checksum") {
        return Error::entry(
            raw,
            "fails its CRC-32 check: its data is not what its header says",
        );
    }
    Error::entry(raw, format!("cannot be read: {e}"))
}

/// Seconds since the epoch of a UTC civil time (days from Howard
/// Hinnant's `days_from_civil`).
fn unix_secs(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hour * 3600 + minute * 60 + second
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_times_count_from_the_epoch() {
        assert_eq!(unix_secs(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(unix_secs(2000, 3, 1, 12, 30, 15), 951_913_815);
        assert_eq!(unix_secs(2024, 2, 29, 0, 0, 0), 1_709_164_800);
    }
}
