//! Tar framing: header blocks, PAX and GNU extension records, sparse maps and
//! data padding, read as a stream.
//!
//! Header fields are decoded by the `tar` crate's `Header`; the framing is
//! ours because that crate's PAX parser splits records on newlines, which
//! breaks binary xattr values (a `security.capability` holding 0x0a, say).
//! PAX records here are length-delimited, as the standard defines them.

use std::io::{self, BufRead, Read};

const BLOCK: usize = 512;

/// Extension data (PAX records, GNU long names) one member may carry: real
/// ones are a few KiB (a long path, an ACL, a capability); anything past
/// this is refused rather than piled up in memory.
const MAX_EXTENSION_BYTES: usize = 1 << 20;
/// Global PAX records one archive may hold at a time. Every member carries
/// them (they are copied into each), so they are bounded tighter; real ones
/// are a line or two (`git archive` writes the commit id).
const MAX_GLOBAL_BYTES: usize = 16 << 10;

/// One archive member, with every extension header that preceded it applied.
pub struct Member {
    pub header: tar::Header,
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    /// PAX records for this member (global ones first), in archive order.
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes of data stored in the archive for this member.
    pub size: u64,
    /// Old-GNU sparse files: the data segments and the real size.
    pub gnu_sparse: Option<(Vec<(u64, u64)>, u64)>,
}

pub struct TarStream<R> {
    r: R,
    /// Data bytes of the current member not yet read, then its padding.
    remaining: u64,
    padding: u64,
    global: Vec<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before the
/// first byte, an error on EOF in the middle.
fn read_block(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive ends inside a header",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Parses PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
pub fn parse_pax(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() && data[0] != 0 {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| invalid("a PAX record has no length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("a PAX record has a bad length"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(invalid("a PAX record's length does not match its content"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| invalid("a PAX record has no '='"))?;
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

fn strip_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(end) = v.iter().position(|&b| b == 0) {
        v.truncate(end);
    }
    v
}

impl<R: Read> TarStream<R> {
    pub fn new(r: R) -> Self {
        TarStream {
            r,
            remaining: 0,
            padding: 0,
            global: Vec::new(),
            done: false,
        }
    }

    pub fn into_inner(self) -> R {
        self.r
    }

    /// Skips what is left of the current member.
    fn skip_rest(&mut self) -> io::Result<()> {
        let n = self.remaining + self.padding;
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        if copied != n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a member",
            ));
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    /// Reads a whole extension member's data (bounded, they are small).
    fn read_extension(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > 64 << 20 {
            return Err(invalid(format!("an extension header claims {size} bytes")));
        }
        let mut data = vec![0u8; size as usize];
        self.r.read_exact(&mut data).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive ends inside an extension header",
                )
            } else {
                e
            }
        })?;
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        io::copy(&mut (&mut self.r).take(pad), &mut io::sink())?;
        Ok(data)
    }

    /// The next member, or `None` at the end of the archive.
    pub fn next_member(&mut self) -> io::Result<Option<Member>> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut long_name, mut long_link) = (None, None);
        // Extension bytes this member has carried so far.
        let mut carried = 0usize;
        loop {
            let mut block = [0u8; BLOCK];
            if !read_block(&mut self.r, &mut block)? || block.iter().all(|&b| b == 0) {
                // End of archive: a zero block (normally two) or plain EOF.
                self.done = true;
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block).clone();
            let stored: u32 = block[..148]
                .iter()
                .chain([b' '; 8].iter())
                .chain(block[156..].iter())
                .map(|&b| u32::from(b))
                .sum();
            if header.cksum().ok() != Some(stored) {
                return Err(invalid(
                    "a header's checksum is wrong: this is not a tar archive, or it is corrupt",
                ));
            }
            let size = header.entry_size()?;
            let kind = header.entry_type().as_byte();
            // (Global records are bounded by what they hold, below.)
            if matches!(kind, b'x' | b'L' | b'K') {
                carried = carried.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
                if carried > MAX_EXTENSION_BYTES {
                    return Err(invalid(format!(
                        "a member's extension headers hold more than {MAX_EXTENSION_BYTES} bytes"
                    )));
                }
            }
            match kind {
                b'x' => pax.extend(parse_pax(&self.read_extension(size)?)?),
                b'g' => {
                    // A later global record replaces an earlier one of the
                    // same key (POSIX), so only distinct keys take room.
                    for (k, v) in parse_pax(&self.read_extension(size)?)? {
                        self.global.retain(|(key, _)| *key != k);
                        self.global.push((k, v));
                    }
                    let held: usize = self.global.iter().map(|(k, v)| k.len() + v.len()).sum();
                    if held > MAX_GLOBAL_BYTES {
                        return Err(invalid(format!(
                            "the archive's global PAX records hold more than {MAX_GLOBAL_BYTES} bytes"
                        )));
                    }
                }
                b'L' => long_name = Some(strip_nul(self.read_extension(size)?)),
                b'K' => long_link = Some(strip_nul(self.read_extension(size)?)),
                _ => {
                    let mut all = self.global.clone();
                    all.extend(pax);
                    let find = |key: &[u8]| {
                        all.iter()
                            .rev()
                            .find(|(k, _)| k == key)
                            .map(|(_, v)| v.clone())
                    };
                    let path = find(b"path")
                        .or(long_name)
                        .unwrap_or_else(|| header.path_bytes().into_owned());
                    let link = find(b"linkpath")
                        .or(long_link)
                        .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
                    let size = match find(b"size") {
                        Some(s) => std::str::from_utf8(&s)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| invalid("a PAX size is not a number"))?,
                        None => size,
                    };
                    let gnu_sparse = if header.entry_type().is_gnu_sparse() {
                        Some(self.gnu_sparse_map(&header)?)
                    } else {
                        None
                    };
                    let has_data = !matches!(
                        header.entry_type().as_byte(),
                        b'1' | b'2' | b'3' | b'4' | b'5' | b'6'
                    );
                    let size = if has_data { size } else { 0 };
                    self.remaining = size;
                    self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
                    return Ok(Some(Member {
                        header,
                        path,
                        link,
                        pax: all,
                        size,
                        gnu_sparse,
                    }));
                }
            }
        }
    }

    /// The segments of an old-GNU sparse member: four in the header, more in
    /// extension blocks that follow it.
    fn gnu_sparse_map(&mut self, header: &tar::Header) -> io::Result<(Vec<(u64, u64)>, u64)> {
        let gnu = header
            .as_gnu()
            .ok_or_else(|| invalid("a GNU sparse member without a GNU header"))?;
        let mut map = Vec::new();
        let mut push = |s: &tar::GnuSparseHeader| -> io::Result<()> {
            if !s.is_empty() {
                map.push((s.offset()?, s.length()?));
            }
            Ok(())
        };
        for s in &gnu.sparse {
            push(s)?;
        }
        let mut extended = gnu.is_extended();
        while extended {
            let mut block = [0u8; BLOCK];
            if !read_block(&mut self.r, &mut block)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive ends inside a sparse map",
                ));
            }
            let ext: tar::GnuExtSparseHeader = {
                let mut e = tar::GnuExtSparseHeader::new();
                e.as_mut_bytes().copy_from_slice(&block);
                e
            };
            for s in &ext.sparse {
                push(s)?;
            }
            extended = ext.is_extended();
        }
        Ok((map, gnu.real_size()?))
    }
}

impl<R: Read> Read for TarStream<R> {
    /// Reads the current member's data; 0 at its end. Ending early is an
    /// `UnexpectedEof` error.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the archive ends {} bytes before this member's end",
                    self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The current member's data, from the stream's own buffer.
impl<R: BufRead> BufRead for TarStream<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.remaining == 0 {
            return Ok(&[]);
        }
        let remaining = self.remaining;
        let data = self.r.fill_buf()?;
        if data.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the archive ends {remaining} bytes before this member's end"),
            ));
        }
        Ok(&data[..data.len().min(remaining as usize)])
    }

    fn consume(&mut self, n: usize) {
        let n = (n as u64).min(self.remaining);
        self.r.consume(n as usize);
        self.remaining -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_may_hold_newlines() {
        let value = b"a\nb\x00c";
        let mut rec = b" SCHILY.xattr.user.x=".to_vec();
        rec.extend_from_slice(value);
        rec.push(b'\n');
        let len = rec.len() + 2; // two digits of length
        let mut data = format!("{len}").into_bytes();
        data.extend_from_slice(&rec);
        data.extend_from_slice(b"12 path=abc\n");
        let recs = parse_pax(&data).unwrap();
        assert_eq!(recs[0], (b"SCHILY.xattr.user.x".to_vec(), value.to_vec()));
        assert_eq!(recs[1], (b"path".to_vec(), b"abc".to_vec()));
        assert!(parse_pax(b"99 path=x\n").is_err());
    }

    /// A tar member header of `kind` whose data is `data`, then the data.
    fn member(kind: u8, name: &str, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    fn record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    fn read_all(archive: Vec<u8>) -> io::Result<usize> {
        let mut t = TarStream::new(&archive[..]);
        let mut n = 0;
        while t.next_member()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn repeated_global_records_replace_each_other() {
        let mut archive = Vec::new();
        // Many global headers with the same key take the room of one.
        for i in 0..5000 {
            archive.extend(member(b'g', "g", &record("comment", &format!("{i:0>500}"))));
        }
        archive.extend(member(b'0', "file", b"x"));
        assert_eq!(read_all(archive).unwrap(), 1);
    }

    #[test]
    fn extension_bytes_are_bounded_per_member_and_per_archive() {
        // Distinct global keys pile up: refused past the bound.
        let mut archive = Vec::new();
        for i in 0..40 {
            archive.extend(member(
                b'g',
                "g",
                &record(&format!("k{i}"), &"v".repeat(500)),
            ));
        }
        archive.extend(member(b'0', "file", b"x"));
        let e = read_all(archive).unwrap_err();
        assert!(e.to_string().contains("global PAX records"), "{e}");

        // Extended headers before one member: their bytes add up.
        let mut archive = Vec::new();
        for i in 0..3000 {
            archive.extend(member(
                b'x',
                "x",
                &record(&format!("k{i}"), &"v".repeat(500)),
            ));
        }
        archive.extend(member(b'0', "file", b"x"));
        let e = read_all(archive).unwrap_err();
        assert!(e.to_string().contains("extension headers"), "{e}");

        // The same bytes spread over many members are fine.
        let mut archive = Vec::new();
        for i in 0..3000 {
            archive.extend(member(b'x', "x", &record("comment", &"v".repeat(500))));
            archive.extend(member(b'0', &format!("f{i}"), b"x"));
        }
        assert_eq!(read_all(archive).unwrap(), 3000);
    }
}
