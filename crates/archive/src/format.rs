//! Which archive a file is, by its first bytes (never by its name), and
//! what a request says it is (`archive_type`), which must agree.

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zip,
    Tar,
    TarGz,
    TarXz,
    TarZst,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Zip,
        Format::Tar,
        Format::TarGz,
        Format::TarXz,
        Format::TarZst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::Tar => "tar",
            Format::TarGz => "tar.gz",
            Format::TarXz => "tar.xz",
            Format::TarZst => "tar.zst",
        }
    }

    /// A format as a request names it: its name, or the usual short forms
    /// (`tgz`, `txz`, `tzst`, `tar.zstd`), in any case.
    pub fn parse(name: &str) -> Result<Format, Error> {
        let name = name.trim().to_ascii_lowercase();
        let name = name.strip_prefix('.').unwrap_or(&name);
        Ok(match name {
            "zip" => Format::Zip,
            "tar" => Format::Tar,
            "tar.gz" | "tgz" | "tar.gzip" => Format::TarGz,
            "tar.xz" | "txz" => Format::TarXz,
            "tar.zst" | "tzst" | "tar.zstd" => Format::TarZst,
            _ => {
                return Err(Error::Archive(format!(
                    "{name:?} is not an archive type builderd takes: give one of {}",
                    Format::ALL.map(Format::name).join(", ")
                )))
            }
        })
    }

    /// What the archive's first bytes (up to 512) say it is. A compressed
    /// stream is taken to hold a tar; the tar reader says so if it does not.
    pub fn sniff(first: &[u8]) -> Option<Format> {
        let starts = |magic: &[u8]| first.starts_with(magic);
        if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") {
            Some(Format::Zip)
        } else if starts(&[0x1f, 0x8b]) {
            Some(Format::TarGz)
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Format::TarXz)
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Format::TarZst)
        } else if is_tar_header(first) {
            Some(Format::Tar)
        } else {
            None
        }
    }

    /// The format of an archive whose first bytes are `first`, refused when
    /// it is none builderd takes or not the one `declared`.
    pub fn of(first: &[u8], declared: Option<Format>) -> Result<Format, Error> {
        let found = Format::sniff(first).ok_or_else(|| {
            Error::Archive(format!(
                "not an archive builderd takes: its first bytes are none of {}",
                Format::ALL.map(Format::name).join(", ")
            ))
        })?;
        match declared {
            Some(d) if d != found => Err(Error::Archive(format!(
                "archive_type says {}, but the archive is a {} (by its first bytes)",
                d.name(),
                found.name()
            ))),
            _ => Ok(found),
        }
    }
}

/// A tar header block: ustar's magic, or an old-style header whose
/// checksum adds up.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    block[0] != 0 && stored == Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_first_bytes_and_must_agree_with_what_is_declared() {
        let mut tar = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar);
            let mut h = tar::Header::new_ustar();
            h.set_path("a").unwrap();
            h.set_size(0);
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
            b.finish().unwrap();
        }
        assert_eq!(Format::sniff(&tar), Some(Format::Tar));
        let mut old = tar::Header::new_old();
        old.set_path("a").unwrap();
        old.set_size(0);
        old.set_cksum();
        assert_eq!(Format::sniff(old.as_bytes()), Some(Format::Tar));
        assert_eq!(Format::sniff(b"PK\x03\x04rest"), Some(Format::Zip));
        assert_eq!(Format::sniff(&[0x1f, 0x8b, 8]), Some(Format::TarGz));
        assert_eq!(Format::sniff(b"\xfd7zXZ\0.."), Some(Format::TarXz));
        assert_eq!(
            Format::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Some(Format::TarZst)
        );
        assert_eq!(Format::sniff(b"hello, world"), None);
        assert_eq!(Format::parse("TGZ").unwrap(), Format::TarGz);
        assert_eq!(Format::parse("tar.zstd").unwrap(), Format::TarZst);
        assert!(Format::parse("rar")
            .unwrap_err()
            .to_string()
            .contains("tar.xz"));
        let err = Format::of(&tar, Some(Format::TarGz))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("says tar.gz, but the archive is a tar"),
            "{err}"
        );
        assert!(Format::of(b"nothing", None).is_err());
    }
}
