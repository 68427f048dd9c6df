//! Lexical path normalisation, as umoci applies it to layer entries.

/// `a/./b//c`, `/a/b/c`, `./a/x/../b/c` and `../../a/b/c` all become
/// `a/b/c`: a leading `/` dropped, `.` and empty components removed, `..`
/// resolved lexically and never above the root. The root is the empty path.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

/// The proper ancestors of a normalised path, nearest to the root first
/// (the root itself excluded).
pub fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(move |(i, _)| &path[..i])
}

/// The parent of a normalised, non-root path (the root is empty).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// The last component of a normalised path.
pub fn base(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `parent/name`, or `name` at the root.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_stay_inside_the_root() {
        for (input, want) in [
            (&b"./a/b"[..], &b"a/b"[..]),
            (b"/etc/passwd", b"etc/passwd"),
            (b"../../../etc/shadow", b"etc/shadow"),
            (b"a/../../b", b"b"),
            (b"a/./b//c/", b"a/b/c"),
            (b".", b""),
            (b"./", b""),
            (b"..", b""),
        ] {
            assert_eq!(normalize(input), want, "{}", input.escape_ascii());
        }
    }

    #[test]
    fn path_parts() {
        assert_eq!(
            ancestors(b"a/b/c").collect::<Vec<_>>(),
            vec![&b"a"[..], b"a/b"]
        );
        assert_eq!(ancestors(b"a").count(), 0);
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
        assert_eq!(base(b"a/b/c"), b"c");
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a", b"x"), b"a/x");
    }
}
