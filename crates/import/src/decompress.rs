//! The one place a stream's decompressor is chosen: from what its first
//! bytes say (an archive a person hands over) or from what a manifest says
//! of it (an image layer). gzip (all members, as `gzip -d` reads them), zstd,
//! xz (all streams, as `xz -d` reads them), or none.

use std::io::{self, BufRead, Read};

/// The most memory an xz stream's decoder may take: its dictionary is the
/// stream's to choose (up to 4 GiB); `xz -9` needs 65 MiB.
const XZ_MEMORY: u64 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

impl Compression {
    /// What a stream's first bytes say it is (not consuming them).
    pub fn sniff(input: &mut impl BufRead) -> io::Result<Compression> {
        let first = input.fill_buf()?;
        Ok(if first.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if first.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else {
            Compression::None
        })
    }
}

/// `input` decompressed as `kind` says (as it is for `None`).
pub fn decoder<'a>(
    input: impl BufRead + Send + 'a,
    kind: Compression,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match kind {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_stream(
            input,
            liblzma::stream::Stream::new_stream_decoder(XZ_MEMORY, liblzma::stream::CONCATENATED)
                .map_err(io::Error::other)?,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn each_kind_is_told_by_its_first_bytes_and_read_back() {
        let data = b"builderd".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&data[..], 1).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&data).unwrap();
        let xz = xz.finish().unwrap();
        for (bytes, kind) in [
            (gz, Compression::Gzip),
            (zst, Compression::Zstd),
            (xz, Compression::Xz),
            (data.clone(), Compression::None),
        ] {
            let mut input = &bytes[..];
            assert_eq!(Compression::sniff(&mut input).unwrap(), kind);
            let mut out = Vec::new();
            decoder(input, kind).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{kind:?}");
        }
    }
}
