//! dpkg's database: `var/lib/dpkg/status` (one stanza per package),
//! `info/PACKAGE[:ARCH].list` (its paths), `alternatives/NAME`, and the
//! trigger interest files; read, and rewritten without the packages that go.

use std::collections::{BTreeMap, BTreeSet};

use builderd_flatten::Found;

use super::closure::{Installed, Pkg};

pub const STATUS: &[u8] = b"var/lib/dpkg/status";
const INFO: &[u8] = b"var/lib/dpkg/info/";
const ALTERNATIVES: &[u8] = b"var/lib/dpkg/alternatives/";
const TRIGGERS: &[u8] = b"var/lib/dpkg/triggers/";

/// The files of dpkg's database the plan reads.
pub fn wanted(path: &[u8]) -> bool {
    path == STATUS
        || path
            .strip_prefix(INFO)
            .is_some_and(|n| n.ends_with(b".list") && !n.contains(&b'/'))
        || path
            .strip_prefix(ALTERNATIVES)
            .is_some_and(|n| !n.contains(&b'/'))
        || path
            .strip_prefix(TRIGGERS)
            .is_some_and(|n| !n.contains(&b'/') && !n.is_empty() && n != b"Lock")
}

/// One stanza of the status file.
pub struct Stanza<'a> {
    pub text: &'a str,
    fields: BTreeMap<String, String>,
}

impl Stanza<'_> {
    pub fn get(&self, field: &str) -> &str {
        self.fields
            .get(&field.to_ascii_lowercase())
            .map_or("", String::as_str)
    }
}

/// The stanzas of a status file, each with its text as written.
pub fn stanzas(status: &str) -> Vec<Stanza<'_>> {
    let mut out = Vec::new();
    for text in status.split("\n\n") {
        if text.trim().is_empty() {
            continue;
        }
        let mut fields = BTreeMap::new();
        let mut last: Option<String> = None;
        for line in text.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(name) = &last {
                    let value: &mut String = fields.entry(name.clone()).or_default();
                    value.push('\n');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                fields.insert(name.clone(), value.trim().to_string());
                last = Some(name);
            }
        }
        out.push(Stanza {
            text: text.trim_matches('\n'),
            fields,
        });
    }
    out
}

/// A package name in a relation: without its `:arch` qualifier.
fn bare(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

/// Depends / Provides syntax: `a (>= 1) | b:any, c [amd64] <!nocheck>`.
pub fn relations(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(|alt| {
                    let name = alt.split(['(', '[', '<']).next()?.trim();
                    // Only the package of that name may satisfy a versioned
                    // relation (a virtual name has no version to compare).
                    let versioned = if alt.contains('(') { "=" } else { "" };
                    (!name.is_empty()).then(|| format!("{versioned}{}", bare(name)))
                })
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// A development package by Debian's conventions.
pub fn is_dev(name: &str, section: &str) -> bool {
    let section = section.rsplit('/').next().unwrap_or(section);
    let compiler = |base: &str| {
        name == base
            || name
                .strip_prefix(base)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
    };
    matches!(section, "devel" | "libdevel" | "debug")
        || name.ends_with("-dev")
        || name.ends_with("-dbg")
        || name.ends_with("-dbgsym")
        || ["gcc", "g++", "cpp", "gfortran", "clang", "llvm"]
            .iter()
            .any(|c| compiler(c))
        || matches!(
            name,
            "make"
                | "build-essential"
                | "pkgconf"
                | "pkgconf-bin"
                | "pkg-config"
                | "autoconf"
                | "automake"
                | "autotools-dev"
                | "libtool"
                | "bison"
                | "flex"
        )
}

/// One installed package of the status file.
pub struct Entry {
    /// Its stanza's index.
    pub stanza: usize,
    pub installed: Installed,
    /// The name its `info/` files have (`NAME:ARCH` or `NAME`); None when
    /// it has no file list.
    pub stem: Option<String>,
}

/// Reads the database into packages for the closure: every package dpkg
/// counts as present (installed, or half-way: unpacked, half-configured,
/// awaiting triggers), each with its paths. Only fully installed ones may
/// go.
pub fn packages<'a>(
    status: &'a str,
    found: &BTreeMap<Vec<u8>, Found>,
) -> (Vec<Stanza<'a>>, Vec<Entry>) {
    let all = stanzas(status);
    let mut pkgs = Vec::new();
    for (index, s) in all.iter().enumerate() {
        let name = s.get("Package");
        let state: Vec<&str> = s.get("Status").split_whitespace().collect();
        let Some(&current) = state.last() else {
            continue;
        };
        if name.is_empty() || matches!(current, "not-installed" | "config-files") {
            continue;
        }
        let essential = s.get("Essential") == "yes"
            || matches!(s.get("Priority"), "required")
            || state.first() == Some(&"hold")
            || current != "installed";
        let mut depends = relations(s.get("Depends"));
        depends.extend(relations(s.get("Pre-Depends")));
        let provides = relations(s.get("Provides"))
            .into_iter()
            .flatten()
            .map(|p| p.trim_start_matches('=').to_string())
            .collect();
        let arch = s.get("Architecture");
        let mut files = Vec::new();
        let mut stem = None;
        for candidate in [format!("{name}:{arch}"), name.to_string()] {
            let path = [INFO, candidate.as_bytes(), b".list"].concat();
            if let Some(Found::File(text)) = found.get(&path) {
                files.extend(
                    text.split(|&b| b == b'\n')
                        .filter_map(|l| l.strip_prefix(b"/"))
                        .filter(|l| !l.is_empty() && *l != b".")
                        .map(<[u8]>::to_vec),
                );
                stem = Some(candidate);
                break;
            }
        }
        let size = s
            .get("Installed-Size")
            .parse::<u64>()
            .unwrap_or(0)
            .saturating_mul(1024);
        pkgs.push(Entry {
            stanza: index,
            installed: Installed {
                pkg: Pkg {
                    name: name.to_string(),
                    provides,
                    depends,
                    candidate: !essential && is_dev(name, s.get("Section")),
                },
                bytes: size,
                paths: files,
            },
            stem,
        });
    }
    (all, pkgs)
}

/// Is `path` one of dpkg's own files (`info/STEM.EXT`) for a removed
/// package, `removed` naming their stems exactly (`libfoo-dev:amd64`: the
/// same package of another architecture keeps its own)?
pub fn is_info_of(path: &[u8], removed: &BTreeSet<String>) -> bool {
    let Some(file) = path.strip_prefix(INFO) else {
        return false;
    };
    let Ok(file) = std::str::from_utf8(file) else {
        return false;
    };
    let Some(dot) = file.rfind('.') else {
        return false;
    };
    removed.contains(&file[..dot])
}

/// The status file without the stanzas at `gone`.
pub fn rewrite_status(all: &[Stanza<'_>], gone: &BTreeSet<usize>) -> Vec<u8> {
    let mut out = String::new();
    for (i, s) in all.iter().enumerate() {
        if !gone.contains(&i) {
            out.push_str(s.text);
            out.push_str("\n\n");
        }
    }
    out.into_bytes()
}

/// What goes with the alternatives all of whose choices were removed
/// (`removed` tells a removed file): their admin file, their links in
/// /etc/alternatives and the links to those; and a warning for each that
/// keeps some choice (it needs `update-alternatives --auto` if it pointed
/// at a removed one).
pub fn alternatives(
    found: &BTreeMap<Vec<u8>, Found>,
    removed: &dyn Fn(&[u8]) -> bool,
) -> (Vec<Vec<u8>>, Vec<String>) {
    let (mut gone, mut warnings) = (Vec::new(), Vec::new());
    for (path, content) in found.range(ALTERNATIVES.to_vec()..) {
        let Some(name) = path.strip_prefix(ALTERNATIVES) else {
            break;
        };
        let Found::File(text) = content else {
            continue;
        };
        let text = String::from_utf8_lossy(text);
        let mut lines = text.lines();
        let (Some(_mode), Some(master)) = (lines.next(), lines.next()) else {
            continue;
        };
        let mut links = vec![(name.to_vec(), master.to_string())];
        let mut slaves = 0;
        while let Some(slave) = lines.next().filter(|l| !l.is_empty()) {
            let Some(link) = lines.next() else { break };
            links.push((slave.as_bytes().to_vec(), link.to_string()));
            slaves += 1;
        }
        let mut choices = Vec::new();
        while let Some(choice) = lines.next().filter(|l| !l.is_empty()) {
            choices.push(choice.trim_start_matches('/').as_bytes().to_vec());
            for _ in 0..=slaves {
                lines.next();
            }
        }
        let removed = choices.iter().filter(|c| removed(c)).count();
        if choices.is_empty() || removed == 0 {
            continue;
        }
        if removed < choices.len() {
            warnings.push(format!(
                "the alternative {} keeps {} of its {} choices; if it pointed at a removed one, run update-alternatives --auto {} in the image",
                String::from_utf8_lossy(name),
                choices.len() - removed,
                choices.len(),
                String::from_utf8_lossy(name)
            ));
            continue;
        }
        gone.push(path.clone());
        for (alt, link) in links {
            gone.push([&b"etc/alternatives/"[..], &alt].concat());
            gone.push(link.trim_start_matches('/').as_bytes().to_vec());
        }
    }
    (gone, warnings)
}

/// Trigger interest files without the removed packages' lines: the files
/// that change, with their new content.
pub fn triggers(
    found: &BTreeMap<Vec<u8>, Found>,
    removed: &BTreeSet<String>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut changed = Vec::new();
    for (path, content) in found.range(TRIGGERS.to_vec()..) {
        if !path.starts_with(TRIGGERS) {
            break;
        }
        let Found::File(text) = content else {
            continue;
        };
        let text = String::from_utf8_lossy(text);
        let kept: String = text
            .lines()
            .filter(|line| {
                let who = line.split_whitespace().last().unwrap_or("");
                let who = who.split('/').next().unwrap_or(who);
                !removed.contains(bare(who))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if kept != text {
            changed.push((path.clone(), kept.into_bytes()));
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_and_dev_names_parse_as_debian_writes_them() {
        assert_eq!(
            relations("libc6 (>= 2.34), libgcc-s1 | libgcc1, nodejs:any, foo [amd64] <!nocheck>"),
            vec![
                vec!["=libc6".to_string()],
                vec!["libgcc-s1".into(), "libgcc1".into()],
                vec!["nodejs".into()],
                vec!["foo".into()]
            ]
        );
        assert!(is_dev("libc6-dev", "libdevel"));
        assert!(is_dev("gcc-12", "devel"));
        assert!(is_dev("cpp-12", "interpreters"));
        assert!(is_dev("cpp", "interpreters"));
        assert!(is_dev("make", "devel"));
        assert!(is_dev("libfoo-dbgsym", "debug"));
        assert!(
            !is_dev("cpp-httplib-runtime", "libs"),
            "{}",
            "not a compiler version"
        );
        assert!(!is_dev("python3", "python"));
        assert!(!is_dev("libgcc-s1", "libs"));
        assert!(
            !is_dev("gcc-12-base", "libs"),
            "the compiler's base files, not the compiler"
        );
        let removed: BTreeSet<String> = ["libpython3.11-dev:amd64".to_string()].into();
        assert!(is_info_of(
            b"var/lib/dpkg/info/libpython3.11-dev:amd64.list",
            &removed
        ));
        assert!(is_info_of(
            b"var/lib/dpkg/info/libpython3.11-dev:amd64.md5sums",
            &removed
        ));
        assert!(!is_info_of(
            b"var/lib/dpkg/info/libpython3.11-dev:i386.md5sums",
            &removed
        ));
        assert!(!is_info_of(
            b"var/lib/dpkg/info/libpython3.11.list",
            &removed
        ));
    }
}
