//! An entry's name made into a plain relative path (`a/b/c`), or refused:
//! absolute names, `..` anywhere, drive letters, NUL, names too deep or
//! too long for the filesystem. In a zip a backslash separates (Windows
//! producers write `dir\file`, as unzip reads them), so `..\x` is refused as
//! `../x` is; in a tar it is an ordinary character of a Linux name.

use crate::Error;

/// ext4's longest name.
const MAX_NAME: usize = 255;
/// Linux's longest path.
const MAX_PATH: usize = 4095;

/// Where a name comes from, which decides what separates its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Zip,
    Tar,
}

/// `raw` as a relative path without `.` or empty parts; None for the
/// archive's root itself (`./`).
pub(crate) fn normalize(
    raw: &[u8],
    origin: Origin,
    max_depth: usize,
) -> Result<Option<Vec<u8>>, Error> {
    let refuse = |rule: &str| Err(Error::entry(raw, rule));
    if raw.contains(&0) {
        return refuse("holds a NUL byte");
    }
    let name: std::borrow::Cow<[u8]> = match origin {
        Origin::Zip if raw.contains(&b'\\') => raw
            .iter()
            .map(|&b| if b == b'\\' { b'/' } else { b })
            .collect::<Vec<u8>>()
            .into(),
        _ => raw.into(),
    };
    if name.starts_with(b"/") {
        return refuse("is absolute: names must be relative to the archive");
    }
    if name.len() >= 2 && name[0].is_ascii_alphabetic() && name[1] == b':' {
        return refuse("starts with a drive letter: names must be relative to the archive");
    }
    let mut path = Vec::with_capacity(name.len());
    let mut depth = 0;
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return refuse("holds \"..\": names must stay inside the archive"),
            _ if part.len() > MAX_NAME => {
                return refuse("has a part longer than 255 bytes, the most a filesystem name holds")
            }
            _ => {}
        }
        depth += 1;
        if depth > max_depth {
            return Err(Error::limit(
                "max_depth",
                format!("{max_depth} directories deep"),
                Some(raw),
            ));
        }
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(part);
    }
    if path.len() > MAX_PATH {
        return refuse("is longer than 4095 bytes, the most a Linux path holds");
    }
    Ok((!path.is_empty()).then_some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(raw: &str, origin: Origin) -> Result<Option<String>, String> {
        normalize(raw.as_bytes(), origin, 8)
            .map(|p| p.map(|p| String::from_utf8(p).unwrap()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_are_made_plain_or_refused_with_the_rule() {
        assert_eq!(n("./a//b/./c", Origin::Tar).unwrap().unwrap(), "a/b/c");
        assert_eq!(n("./", Origin::Tar).unwrap(), None);
        assert_eq!(
            n("dir\\file.txt", Origin::Zip).unwrap().unwrap(),
            "dir/file.txt"
        );
        assert_eq!(
            n("dir\\file.txt", Origin::Tar).unwrap().unwrap(),
            "dir\\file.txt"
        );
        for (bad, rule) in [
            ("/etc/passwd", "absolute"),
            ("a/../../x", "\"..\""),
            ("..", "\"..\""),
            ("C:/x", "drive letter"),
        ] {
            let e = n(bad, Origin::Tar).unwrap_err();
            assert!(e.contains(rule), "{bad}: {e}");
        }
        for (bad, rule) in [
            ("..\\..\\etc\\passwd", "\"..\""),
            ("\\\\server\\share\\x", "absolute"),
            ("C:\\Windows\\x", "drive letter"),
        ] {
            let e = n(bad, Origin::Zip).unwrap_err();
            assert!(e.contains(rule), "{bad}: {e}");
        }
        let deep = ["d"; 9].join("/");
        let e = n(&deep, Origin::Tar).unwrap_err();
        assert!(e.contains("max_depth limit (8 directories deep)"), "{e}");
        assert!(n(&"x".repeat(256), Origin::Tar)
            .unwrap_err()
            .contains("255"));
        assert!(normalize(b"a\0b", Origin::Tar, 8).is_err());
    }
}
