//! The htree directory hash: ext4's half-MD4 over the name, in its
//! unsigned-char variant (the filesystem sets `EXT2_FLAGS_UNSIGNED_HASH`, so
//! the result does not depend on the host's `char` signedness).

const K2: u32 = 0o13240474631;
const K3: u32 = 0o15666365641;
const DEFAULT_SEED: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
/// The largest hash a 32-bit htree may hold; a name hashing to the EOF marker
/// moves just below it, as the kernel does.
const HTREE_EOF_32BIT: u32 = 0x7fff_ffff;

fn half_md4_transform(buf: &mut [u32; 4], input: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($fun:expr, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($fun($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s);
        };
    }
    let i = input;
    round!(f, a, b, c, d, i[0], 3);
    round!(f, d, a, b, c, i[1], 7);
    round!(f, c, d, a, b, i[2], 11);
    round!(f, b, c, d, a, i[3], 19);
    round!(f, a, b, c, d, i[4], 3);
    round!(f, d, a, b, c, i[5], 7);
    round!(f, c, d, a, b, i[6], 11);
    round!(f, b, c, d, a, i[7], 19);

    round!(g, a, b, c, d, i[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, i[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, i[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, i[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, i[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, i[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, i[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, i[6].wrapping_add(K2), 13);

    round!(h, a, b, c, d, i[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, i[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, i[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, i[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, i[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, i[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, i[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, i[4].wrapping_add(K3), 15);

    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// Packs up to 32 bytes of `msg` (whose full remaining length is `len`) into
/// eight words, padding with a pattern made from the length (`str2hashbuf`).
fn str_to_hashbuf(msg: &[u8], len: usize) -> [u32; 8] {
    let len32 = len as u32;
    let mut pad = len32 | (len32 << 8);
    pad |= pad << 16;
    let mut out = [pad; 8];
    let mut val = pad;
    let mut word = 0;
    for (i, &byte) in msg.iter().take(32.min(len)).enumerate() {
        val = u32::from(byte).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[word] = val;
            word += 1;
            val = pad;
        }
    }
    if word < 8 {
        out[word] = val;
    }
    out
}

/// Returns the (major) htree hash of `name` with the filesystem's `seed`.
pub fn name_hash(name: &[u8], seed: &[u32; 4]) -> u32 {
    let mut buf = if seed.iter().any(|&w| w != 0) {
        *seed
    } else {
        DEFAULT_SEED
    };
    let mut rest = name;
    loop {
        let input = str_to_hashbuf(rest, rest.len());
        half_md4_transform(&mut buf, &input);
        if rest.len() <= 32 {
            break;
        }
        rest = &rest[32..];
    }
    let mut hash = buf[1] & !1;
    if hash == HTREE_EOF_32BIT << 1 {
        hash = (HTREE_EOF_32BIT - 1) << 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// e2fsprogs' own implementation (`debugfs dx_hash`, hash 4 =
    /// half_md4_unsigned) is the reference, on names with high bytes, of
    /// every length class (under, at and over one 32-byte round).
    #[test]
    fn matches_debugfs_dx_hash() {
        let uuid = "01020304-0506-0708-090a-0b0c0d0e0f10";
        let seed = [0x0403_0201, 0x0807_0605, 0x0c0b_0a09, 0x100f_0e0d];
        let names: Vec<Vec<u8>> = vec![
            b"hello".to_vec(),
            b"caf\xe9".to_vec(),
            b"\xff\xfe\x80".to_vec(),
            vec![b'x'; 32],
            [&b"caf\xe9-"[..], &[b'n'; 60][..]].concat(),
            (0x80..=0xfe).collect(),
        ];
        for name in names {
            let mut cmd = b"dx_hash -h 4 -s ".to_vec();
            cmd.extend_from_slice(uuid.as_bytes());
            cmd.push(b' ');
            cmd.extend_from_slice(&name);
            let out = std::process::Command::new("debugfs")
                .arg("-R")
                .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&cmd))
                .output()
                .expect("debugfs (e2fsprogs) is installed");
            let text = String::from_utf8_lossy(&out.stdout);
            let hex = text
                .split(" is 0x")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or_else(|| panic!("debugfs said: {text}"));
            let want = u32::from_str_radix(hex, 16).unwrap();
            assert_eq!(name_hash(&name, &seed), want, "{}", name.escape_ascii());
        }
    }
}
