//! The kernel QEMU starts: a bzImage's compressed payload unpacked once to
//! the kernel's ELF (vmlinux), which QEMU enters through its PVH entry point,
//! with no real-mode setup and no decompression inside the guest (under TCG
//! that more than halves the time to the app; see bench/boot.py). Unpacked
//! kernels are kept in the cache by the bzImage's sha256.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use builderd_oci::Digest;

/// A kernel file, read once.
pub struct Kernel {
    path: PathBuf,
    image: Vec<u8>,
}

impl Kernel {
    pub fn read(path: &Path) -> Result<Kernel> {
        let image = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        Ok(Kernel {
            path: path.to_path_buf(),
            image,
        })
    }

    /// The x86 boot header, when the file is a bzImage.
    fn boot_header(&self) -> Option<&[u8]> {
        (self.image.get(0x202..0x206)? == b"HdrS").then_some(&self.image[..])
    }

    /// The kernel release the boot header names (for /lib/modules/RELEASE).
    pub fn release(&self) -> Result<String> {
        let shown = self.path.display();
        let Some(image) = self.boot_header() else {
            bail!("{shown}: not a Linux bzImage (no boot header); give --modules DIR");
        };
        let offset = u16::from_le_bytes([image[0x20e], image[0x20f]]) as usize + 0x200;
        let text = image.get(offset..).unwrap_or_default();
        let end = text.iter().position(|&b| b == b' ' || b == 0).unwrap_or(0);
        match std::str::from_utf8(&text[..end]) {
            Ok(release) if !release.is_empty() => Ok(release.to_string()),
            _ => bail!("{shown}: the boot header names no kernel release; give --modules DIR"),
        }
    }

    /// The file to give QEMU's -kernel: the unpacked ELF when the kernel has
    /// a PVH entry, else the kernel file itself.
    pub fn bootable(&self, cache: &Path) -> Result<PathBuf> {
        let Some(payload) = self.boot_header().and_then(payload) else {
            return Ok(self.path.clone()); // not a bzImage: QEMU takes it as it is
        };
        let sha = Digest::of(&self.image);
        let elf_path = cache.join(format!("{}.vmlinux", sha.hex()));
        if elf_path.exists() {
            return Ok(elf_path);
        }
        let elf = match unpack(payload) {
            Ok(elf) if has_pvh_entry(&elf) => elf,
            _ => return Ok(self.path.clone()),
        };
        std::fs::create_dir_all(cache).with_context(|| format!("{}", cache.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(cache)?;
        std::io::Write::write_all(&mut tmp, &elf)?;
        tmp.persist(&elf_path)?;
        Ok(elf_path)
    }
}

/// The compressed kernel inside a bzImage, by its boot header's
/// payload_offset and payload_length.
fn payload(image: &[u8]) -> Option<&[u8]> {
    let u32_at =
        |o: usize| Some(u32::from_le_bytes(image.get(o..o + 4)?.try_into().ok()?) as usize);
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    image.get(start..start + u32_at(0x24c)?)
}

fn unpack(payload: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            liblzma::read::XzDecoder::new(payload).read_to_end(&mut out)?;
        }
        [0x1f, 0x8b, ..] => {
            flate2::read::GzDecoder::new(payload).read_to_end(&mut out)?;
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            zstd::stream::read::Decoder::new(payload)?.read_to_end(&mut out)?;
        }
        _ => anyhow::bail!("an unknown kernel compression"),
    }
    Ok(out)
}

/// Whether a 64-bit ELF has the note QEMU needs to start it directly
/// (XEN_ELFNOTE_PHYS32_ENTRY, from the kernel's CONFIG_PVH).
fn has_pvh_entry(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const PHYS32_ENTRY: u32 = 18;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph) != Some(PT_NOTE) {
            continue;
        }
        let (Some(offset), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            continue;
        };
        let mut at = offset;
        while at + 12 <= offset + size {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                break;
            };
            let name = elf
                .get(at + 12..at + 12 + namesz as usize)
                .unwrap_or_default();
            if kind == PHYS32_ENTRY && name.starts_with(b"Xen") {
                return true;
            }
            at += 12 + (namesz as usize).div_ceil(4) * 4 + (descsz as usize).div_ceil(4) * 4;
        }
    }
    false
}
