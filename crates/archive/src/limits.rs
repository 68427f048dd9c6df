//! What an archive may hold, and the count kept against it as it streams:
//! entries, bytes written (what is actually read, never what a header
//! declares), one entry's bytes, path depth, and how many times the
//! archive's own bytes the output is (a decompression bomb's mark).

use crate::Error;

/// The bytes of all names kept while extracting (to hold links inside the
/// tree): memory, whatever the names' lengths.
pub const MAX_NAME_BYTES: u64 = 256 << 20;

/// Output below this is never refused for its ratio: a small file of zeros
/// compresses a thousandfold and is no bomb.
pub const RATIO_FLOOR: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file data in all, uncompressed.
    pub max_bytes: u64,
    /// Entries of every kind.
    pub max_entries: u64,
    /// Bytes of one file.
    pub max_entry_bytes: u64,
    /// Directories deep, counting the entry's own name.
    pub max_depth: usize,
    /// Output bytes per byte of the archive read so far (past `RATIO_FLOOR`).
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: 4 << 30,
            max_entries: 500_000,
            max_entry_bytes: 2 << 30,
            max_depth: 64,
            max_ratio: 200,
        }
    }
}

/// The count against the limits.
pub(crate) struct Budget {
    pub limits: Limits,
    pub entries: u64,
    pub bytes: u64,
    /// Bytes of the names kept.
    names: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            entries: 0,
            bytes: 0,
            names: 0,
        }
    }

    /// One more entry, named `name` (a directory it implies is one too).
    pub fn entry(&mut self, name: &[u8]) -> Result<(), Error> {
        self.entries += 1;
        self.names += name.len() as u64;
        if self.names > MAX_NAME_BYTES {
            return Err(Error::limit(
                "name bytes",
                format!("{MAX_NAME_BYTES} bytes of names"),
                Some(name),
            ));
        }
        if self.entries > self.limits.max_entries {
            return Err(Error::limit(
                "max_entries",
                format!("{} entries", self.limits.max_entries),
                Some(name),
            ));
        }
        Ok(())
    }

    /// A file whose header declares `size` bytes: refused at once if that
    /// is already too much (what it really holds is counted as it is read).
    pub fn declared(&self, name: &[u8], size: u64) -> Result<(), Error> {
        self.entry_bytes(name, size)?;
        self.total(name, self.bytes.saturating_add(size))
    }

    /// `n` more bytes of the file `name`, which now holds `so_far`;
    /// `archive_read` bytes of the archive were read to get them.
    pub fn grow(
        &mut self,
        name: &[u8],
        so_far: u64,
        n: u64,
        archive_read: u64,
    ) -> Result<(), Error> {
        self.bytes += n;
        self.entry_bytes(name, so_far)?;
        self.total(name, self.bytes)?;
        self.ratio(Some(name), self.bytes, archive_read)
    }

    /// The ratio check alone, for output counted elsewhere (a tar stream's
    /// headers and padding as well as its data).
    pub fn ratio(&self, name: Option<&[u8]>, out: u64, archive_read: u64) -> Result<(), Error> {
        if out > RATIO_FLOOR && out / archive_read.max(1) >= self.limits.max_ratio {
            return Err(Error::limit(
                "max_ratio",
                format!("{}:1 of the archive's bytes", self.limits.max_ratio),
                name,
            ));
        }
        Ok(())
    }

    fn entry_bytes(&self, name: &[u8], size: u64) -> Result<(), Error> {
        if size > self.limits.max_entry_bytes {
            return Err(Error::limit(
                "max_entry_bytes",
                format!("{} bytes in one file", self.limits.max_entry_bytes),
                Some(name),
            ));
        }
        Ok(())
    }

    fn total(&self, name: &[u8], bytes: u64) -> Result<(), Error> {
        if bytes > self.limits.max_bytes {
            return Err(Error::limit(
                "max_bytes",
                format!("{} bytes uncompressed", self.limits.max_bytes),
                Some(name),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_is_named_when_it_is_passed() {
        let limits = Limits {
            max_bytes: 100 << 20,
            max_entries: 2,
            max_entry_bytes: 50 << 20,
            max_depth: 4,
            max_ratio: 10,
        };
        let mut b = Budget::new(limits);
        b.entry(b"a").unwrap();
        b.entry(b"b").unwrap();
        let e = b.entry(b"c").unwrap_err().to_string();
        assert!(e.contains("max_entries limit (2 entries), at \"c\""), "{e}");
        let e = b.declared(b"big", 60 << 20).unwrap_err().to_string();
        assert!(e.contains("max_entry_bytes"), "{e}");
        // Under the floor, any ratio goes.
        b.grow(b"z", 10 << 20, 10 << 20, 1).unwrap();
        let e = b
            .grow(b"z", 20 << 20, 10 << 20, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_ratio limit (10:1"), "{e}");
        let mut b = Budget::new(limits);
        b.grow(b"x", 40 << 20, 40 << 20, 40 << 20).unwrap();
        b.grow(b"y", 40 << 20, 40 << 20, 80 << 20).unwrap();
        let e = b
            .grow(b"w", 40 << 20, 40 << 20, 120 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_bytes"), "{e}");
    }
}
