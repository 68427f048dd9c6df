//! The crc32c flavour ext4 uses: the kernel's `ext4_chksum` is a raw CRC-32C
//! update (no final inversion) that chains from a seed.

/// Continues a raw ext4 CRC-32C from `seed` over `data`.
pub(crate) fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    // The crc32c crate computes the standard (pre- and post-inverted) form;
    // inverting on both sides turns it into the kernel's raw update.
    !crc32c::crc32c_append(!seed, data)
}

/// The filesystem checksum seed: the raw CRC-32C of the UUID from ~0.
pub(crate) fn fs_seed(uuid: &[u8; 16]) -> u32 {
    crc32c_raw(!0, uuid)
}

/// The per-inode seed used by inode, extent, directory and htree checksums.
pub(crate) fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    let s = crc32c_raw(fs_seed, &ino.to_le_bytes());
    crc32c_raw(s, &generation.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_crc_chains_like_one_pass() {
        let a = crc32c_raw(!0, b"hello ");
        assert_eq!(crc32c_raw(a, b"world"), crc32c_raw(!0, b"hello world"));
    }

    #[test]
    fn raw_crc_matches_standard_crc32c_check_value() {
        // CRC-32C("123456789") is 0xE3069283 in its standard inverted form.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }
}
