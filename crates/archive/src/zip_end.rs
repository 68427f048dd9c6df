//! A zip's end of central directory record, read on its own: the entry
//! count it declares (zip64's when the classic record defers to it), before
//! any central directory is parsed; and what a zip inside the archive says
//! it unpacks to.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;

use zip::ZipArchive;

use crate::Error;

/// What a zip inside the archive declares.
pub(crate) enum Nested {
    /// Not a zip that reads: an ordinary file that starts as one.
    Unreadable,
    /// More entries than the limit.
    TooMany(u64),
    /// Its entries' sizes, added up.
    Unpacks(u64),
}

/// What a zip written out as a file of the archive declares (its end
/// record's count, then its central directory's sizes, read without
/// unpacking anything).
pub(crate) fn nested_size(file: &File, max_entries: u64) -> Nested {
    let Ok(size) = file.metadata().map(|m| m.len()) else {
        return Nested::Unreadable;
    };
    match declared_entries(file, size) {
        Ok(n) if n > max_entries => return Nested::TooMany(n),
        Ok(_) => {}
        Err(_) => return Nested::Unreadable,
    }
    let Ok(mut zip) = ZipArchive::new(BufReader::new(file)) else {
        return Nested::Unreadable;
    };
    let mut total = 0u64;
    for i in 0..zip.len() {
        match zip.by_index_raw(i) {
            Ok(entry) => total = total.saturating_add(entry.size()),
            Err(_) => return Nested::Unreadable,
        }
    }
    Nested::Unpacks(total)
}

/// The entry count the end of central directory record declares (zip64's
/// when the classic record defers to it).
pub(crate) fn declared_entries(file: &File, size: u64) -> Result<u64, Error> {
    let not_zip = |why: &str| Error::Archive(format!("not a zip builderd can read: {why}"));
    let tail_len = size.min(65_535 + 22);
    let tail_at = size - tail_len;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact_at(&mut tail, tail_at)
        .map_err(|e| not_zip(&e.to_string()))?;
    let pos = (0..=tail.len().saturating_sub(22))
        .rev()
        .find(|&i| tail[i..].starts_with(b"PK\x05\x06"))
        .ok_or_else(|| not_zip("it has no end of central directory record"))?;
    let eocd = &tail[pos..];
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let entries = u16_at(eocd, 10);
    if entries != u16::MAX && u32_at(eocd, 12) != u32::MAX && u32_at(eocd, 16) != u32::MAX {
        return Ok(entries.into());
    }
    let locator_at = (tail_at + pos as u64)
        .checked_sub(20)
        .ok_or_else(|| not_zip("its zip64 locator is missing"))?;
    let mut locator = [0u8; 20];
    file.read_exact_at(&mut locator, locator_at)
        .map_err(|e| not_zip(&e.to_string()))?;
    if !locator.starts_with(b"PK\x06\x07") {
        // A classic archive that happens to hold 65535 entries.
        return Ok(entries.into());
    }
    let mut record = [0u8; 56];
    file.read_exact_at(&mut record, u64_at(&locator, 8))
        .map_err(|_| not_zip("its zip64 end record is out of the file"))?;
    if !record.starts_with(b"PK\x06\x06") {
        return Err(not_zip(
            "its zip64 end record is not where its locator says",
        ));
    }
    Ok(u64_at(&record, 32))
}
