//! apk's database: `lib/apk/db/installed` (one stanza per package, with
//! its files as `F:` directories and `R:` names) and `lib/apk/world` (what
//! was asked for); rewritten without the packages that go.

use std::collections::BTreeSet;

use super::closure::{Installed, Pkg};

pub const INSTALLED: &[u8] = b"lib/apk/db/installed";
pub const WORLD: &[u8] = b"lib/apk/world";

/// A dependency or provided name without its version or repository tag:
/// `so:libc.musl-x86_64.so.1`, `cmd:make`, `musl-dev`.
fn bare(word: &str) -> &str {
    let end = word.find(['<', '>', '=', '~', '@']).unwrap_or(word.len());
    &word[..end]
}

/// A development package by Alpine's conventions.
pub fn is_dev(name: &str) -> bool {
    name.ends_with("-dev")
        || name.ends_with("-dbg")
        || matches!(
            name,
            "build-base"
                | "gcc"
                | "g++"
                | "make"
                | "musl-dev"
                | "libc-dev"
                | "pkgconf"
                | "pkgconfig"
                | "autoconf"
                | "automake"
                | "libtool"
                | "binutils"
                | "fortify-headers"
                | "clang"
                | "bison"
                | "flex"
        )
}

/// Installed packages: each stanza's text, the package, its size and its
/// paths (directories first, then their files).
pub fn packages(installed: &str) -> Vec<(&str, Installed)> {
    let mut out = Vec::new();
    for text in installed.split("\n\n") {
        if text.trim().is_empty() {
            continue;
        }
        let mut pkg = Pkg::default();
        let mut size = 0;
        let mut files = Vec::new();
        let mut dir = String::new();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "P" => pkg.name = value.to_string(),
                "D" => pkg.depends.extend(
                    value
                        .split_whitespace()
                        .filter(|w| !w.starts_with('!'))
                        .map(|w| {
                            // A versioned dependency on a package's own name
                            // is met only by that package.
                            let versioned = w.len() != bare(w).len() && !w.contains(':');
                            vec![format!("{}{}", if versioned { "=" } else { "" }, bare(w))]
                        }),
                ),
                "p" => pkg
                    .provides
                    .extend(value.split_whitespace().map(|w| bare(w).to_string())),
                "I" => size = value.parse().unwrap_or(0),
                "F" => {
                    dir = value.to_string();
                    files.push(dir.as_bytes().to_vec());
                }
                "R" => files.push(format!("{dir}/{value}").into_bytes()),
                _ => {}
            }
        }
        if pkg.name.is_empty() {
            continue;
        }
        pkg.candidate = is_dev(&pkg.name);
        out.push((
            text.trim_matches('\n'),
            Installed {
                pkg,
                bytes: size,
                paths: files,
            },
        ));
    }
    out
}

/// The installed file without the removed packages' stanzas.
pub fn rewrite_installed(stanzas: &[(&str, bool)]) -> Vec<u8> {
    let mut out = String::new();
    for (text, gone) in stanzas {
        if !gone {
            out.push_str(text);
            out.push_str("\n\n");
        }
    }
    out.into_bytes()
}

/// The world file without removed packages.
pub fn rewrite_world(world: &str, removed: &BTreeSet<String>) -> Vec<u8> {
    let kept: Vec<&str> = world
        .split_whitespace()
        .filter(|w| !removed.contains(bare(w)))
        .collect();
    let mut out = kept.join("\n");
    out.push('\n');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_files_and_so_providers_parse() {
        let db = "P:libfoo-dev\nV:1\np:so:libfoo.so.1=1.0 cmd:foo-config=1\nI:4096\nF:usr/include\nR:foo.h\nF:usr/lib\nR:libfoo.so.1\n\n\
                  P:app\nV:2\nD:so:libfoo.so.1 musl>=1.2 !conflict\nF:usr/bin\nR:app\n\n";
        let pkgs = packages(db);
        assert_eq!(pkgs.len(), 2);
        let foo = &pkgs[0].1;
        assert!(foo.pkg.candidate);
        assert_eq!(foo.bytes, 4096);
        assert_eq!(foo.pkg.provides, vec!["so:libfoo.so.1", "cmd:foo-config"]);
        assert_eq!(
            &foo.paths,
            &vec![
                b"usr/include".to_vec(),
                b"usr/include/foo.h".to_vec(),
                b"usr/lib".to_vec(),
                b"usr/lib/libfoo.so.1".to_vec()
            ]
        );
        assert_eq!(
            pkgs[1].1.pkg.depends,
            vec![
                vec!["so:libfoo.so.1".to_string()],
                vec!["=musl".to_string()]
            ]
        );
        let removed: BTreeSet<String> = ["gcc".to_string()].into();
        assert_eq!(
            rewrite_world("app\ngcc>=12\nmusl@edge\n", &removed),
            b"app\nmusl@edge\n"
        );
    }
}
