//! Content digests, checked as content streams past.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::Error;

/// A validated `sha256:<64 lowercase hex>` digest: safe to use in a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, Error> {
        match s.split_once(':') {
            Some(("sha256", hex))
                if hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Digest(s.to_string()))
            }
            Some(("sha256", _)) => Err(Error::Manifest(format!(
                "{s:?} is not a valid sha256 digest"
            ))),
            _ => Err(Error::Manifest(format!(
                "digest {s:?} uses an unsupported algorithm (only sha256 is)"
            ))),
        }
    }

    pub fn of(data: &[u8]) -> Digest {
        Digest::of_hasher(Sha256::new_with_prefix(data))
    }

    /// The digest of what `hash` was fed.
    pub fn of_hasher(hash: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex(&hash.finalize())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// Checks `data` has this digest and `size`.
    pub fn verify(&self, data: &[u8], size: u64) -> Result<(), Error> {
        if data.len() as u64 != size {
            return Err(Error::Digest {
                digest: self.0.clone(),
                reason: format!("is {} bytes, the manifest says {size}", data.len()),
            });
        }
        let got = Digest::of(data);
        if &got != self {
            return Err(Error::Digest {
                digest: self.0.clone(),
                reason: format!("the content's digest is {}", got.0),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a blob, hashing it; at its end, fails with an error naming the
/// expected digest unless the size and digest match.
pub struct VerifyingReader<R> {
    inner: R,
    expected: Digest,
    size: u64,
    read: u64,
    hash: Sha256,
    checked: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, size: u64) -> Self {
        VerifyingReader {
            inner,
            expected,
            size,
            read: 0,
            hash: Sha256::new(),
            checked: false,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.hash.update(&buf[..n]);
        // This crate's Digest error inside, so that whoever reads the I/O error
        // can tell a bad blob (the source's fault) from a failed read.
        let mismatch = |reason: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                crate::Error::Digest {
                    digest: self.expected.to_string(),
                    reason,
                },
            )
        };
        if self.read > self.size {
            return Err(mismatch(format!(
                "is longer than the {} bytes the manifest says",
                self.size
            )));
        }
        if n == 0 && !self.checked && !buf.is_empty() {
            self.checked = true;
            if self.read != self.size {
                return Err(mismatch(format!(
                    "is {} bytes, the manifest says {}",
                    self.read, self.size
                )));
            }
            let got = format!("sha256:{}", hex(&self.hash.clone().finalize()));
            if got != self.expected.0 {
                return Err(mismatch(format!("the content's digest is {got}")));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(Digest::parse(d.as_str()).is_ok());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse("md5:abc").is_err());
        assert!(Digest::parse(&d.as_str().to_uppercase().replace("SHA256", "sha256")).is_err());
    }

    #[test]
    fn verifying_reader_fails_at_the_end_on_a_mismatch() {
        let good = Digest::of(b"hello");
        let mut out = Vec::new();
        VerifyingReader::new(&b"hello"[..], good.clone(), 5)
            .read_to_end(&mut out)
            .unwrap();
        let err = VerifyingReader::new(&b"hellO"[..], good.clone(), 5)
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(err.to_string().contains(good.as_str()), "{err}");
        assert!(matches!(
            err.get_ref().and_then(|e| e.downcast_ref::<crate::Error>()),
            Some(crate::Error::Digest { .. })
        ));
        assert!(VerifyingReader::new(&b"hello!"[..], good.clone(), 5)
            .read_to_end(&mut out)
            .is_err());
        assert!(VerifyingReader::new(&b"hell"[..], good, 5)
            .read_to_end(&mut out)
            .is_err());
    }
}
