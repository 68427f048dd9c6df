//! Sizes on the command line: `4096`, `512M`, `2G`, `1.5GiB`, `5MB`, and for
//! free space also `20%`. Binary suffixes (K, M, G, T, and KiB, MiB, GiB,
//! TiB) are powers of two; SI ones (kB, MB, GB, TB) are powers of ten.

use builderd_ext4::Free;

pub use builderd_build::units::{count, human};

/// Parses a byte count with an optional suffix: K, M, G, T, KiB, MiB, GiB,
/// TiB (powers of two) or kB, MB, GB, TB (powers of ten), any case.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let unit: f64 = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KIB" => 1024.0,
        "M" | "MIB" => 1024f64.powi(2),
        "G" | "GIB" => 1024f64.powi(3),
        "T" | "TIB" => 1024f64.powi(4),
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        other => {
            return Err(format!(
                "unknown size suffix {other:?} in {s:?} (use K, M, G, T or KiB, MiB, GiB, TiB for powers of two; kB, MB, GB, TB for powers of ten)"
            ))
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 512M, 2G)"))?;
    let bytes = value * unit;
    if !(0.0..1.8e19).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Parses `--free`: a byte count or a percentage of the filesystem.
pub fn parse_free(s: &str) -> Result<Free, String> {
    match s.trim().strip_suffix('%') {
        Some(p) => {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage"))?;
            if !(0.0..100.0).contains(&p) {
                return Err(format!(
                    "{s:?}: the free percentage must be at least 0 and below 100"
                ));
            }
            Ok(Free::Percent(p))
        }
        None => parse_bytes(s).map(Free::Bytes),
    }
}

/// Parses a UUID in its usual 8-4-4-4-12 hex form.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || s.len() != 36 {
        return Err(format!(
            "{s:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        ));
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{s:?} is not a UUID"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert!(parse_bytes("12Q").is_err());
        // SI suffixes are powers of ten, binary ones powers of two.
        assert_eq!(parse_bytes("5MB"), Ok(5_000_000));
        assert_eq!(parse_bytes("5MiB"), Ok(5 << 20));
        assert_eq!(parse_bytes("5M"), Ok(5 << 20));
        assert_eq!(parse_bytes("2kB"), Ok(2000));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_free("20%"), Ok(Free::Percent(20.0)));
        assert_eq!(parse_free("64M"), Ok(Free::Bytes(64 << 20)));
        assert!(parse_free("100%").is_err());
    }

    #[test]
    fn uuids_parse() {
        let u = parse_uuid("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        assert_eq!(u[0], 0x01);
        assert_eq!(u[15], 0xef);
        assert!(parse_uuid("0123456789abcdef0123456789abcdef").is_err());
    }
}
