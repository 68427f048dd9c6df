//! The kernel QEMU starts: a bzImage's compressed payload unpacked once to
//! the kernel's ELF (vmlinux), which QEMU enters through its PVH entry point,
//! with no real-mode setup and no decompression inside the guest (under TCG
//! that more than halves the time to the app; see bench/boot.py). Unpacked
//! kernels are kept in the cache by the bzImage's sha256.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

/// The file to give QEMU's -kernel for `kernel`: the unpacked ELF when the
/// kernel has a PVH entry, else the bzImage itself.
pub fn bootable(kernel: &Path, cache: &Path) -> Result<PathBuf> {
    let image = std::fs::read(kernel).with_context(|| format!("{}", kernel.display()))?;
    let Some(payload) = payload(&image) else {
        return Ok(kernel.to_path_buf()); // not a bzImage: QEMU takes it as it is
    };
    let sha: String = Sha256::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let elf_path = cache.join(format!("{sha}.vmlinux"));
    if elf_path.exists() {
        return Ok(elf_path);
    }
    let elf = match unpack(payload) {
        Ok(elf) if has_pvh_entry(&elf) => elf,
        _ => return Ok(kernel.to_path_buf()),
    };
    std::fs::create_dir_all(cache).with_context(|| format!("{}", cache.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(cache)?;
    std::io::Write::write_all(&mut tmp, &elf)?;
    tmp.persist(&elf_path)?;
    Ok(elf_path)
}

/// The compressed kernel inside a bzImage, by its boot header's
/// payload_offset and payload_length.
fn payload(image: &[u8]) -> Option<&[u8]> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
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
