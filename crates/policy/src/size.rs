//! `optimize_for_size`: what an image carries that a microVM running its
//! app never reads. Decided by path alone, so the lanes drop it before its
//! bytes are written. Directories a package manager expects (apt's
//! `partial` directories, `/var/log`, `/tmp` itself) are kept; those under
//! a dropped tree go when nothing is left in them. Licence files stay:
//! they must ship with the software.

use builderd_flatten::{Rule, Verdict};
use builderd_import::EntryKind;

use crate::rules::*;

/// The size rules for one image.
pub struct SizeRules {
    /// Languages (`en`, `de`) whose message catalogs and locales stay: those
    /// the image's environment names.
    languages: Vec<Vec<u8>>,
}

/// The language of a locale name: `en` of `en_US.UTF-8@euro`.
fn language(locale: &[u8]) -> &[u8] {
    let end = locale
        .iter()
        .position(|b| matches!(b, b'_' | b'.' | b'@'))
        .unwrap_or(locale.len());
    &locale[..end]
}

/// Is this file a licence, copyright or notice (which must ship)?
fn is_licence(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    [
        &b"copyright"[..],
        b"copying",
        b"license",
        b"licence",
        b"notice",
        b"unlicense",
    ]
    .iter()
    .any(|p| lower.starts_with(p))
}

/// Splits `path` after `prefix` (whole components): the rest, if `path`
/// is strictly below it.
fn below<'a>(path: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    path.strip_prefix(prefix)?
        .strip_prefix(b"/")
        .filter(|rest| !rest.is_empty())
}

/// The part of a path below a home directory (`root/` or `home/USER/`).
fn in_home(path: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = below(path, b"root") {
        return Some(rest);
    }
    let rest = below(path, b"home")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    Some(&rest[slash + 1..])
}

impl SizeRules {
    /// `env` is the image's environment (`NAME=value`): LANG, LC_ALL,
    /// LC_MESSAGES and LANGUAGE name the languages kept.
    pub fn new(env: &[String]) -> SizeRules {
        let mut languages = Vec::new();
        for entry in env {
            let Some((name, value)) = entry.split_once('=') else {
                continue;
            };
            if !matches!(name, "LANG" | "LC_ALL" | "LC_MESSAGES" | "LANGUAGE") {
                continue;
            }
            for locale in value.split(':') {
                let lang = language(locale.as_bytes());
                if !lang.is_empty() && lang != b"C" && lang != b"POSIX" {
                    languages.push(lang.to_vec());
                }
            }
        }
        SizeRules { languages }
    }

    /// The rule that drops this entry, if one does.
    pub fn select(&self, path: &[u8], kind: &EntryKind) -> Option<Verdict> {
        let dir = *kind == EntryKind::Dir;
        let symlink = matches!(kind, EntryKind::Symlink(_));
        let regular = matches!(kind, EntryKind::File | EntryKind::Hardlink(_));
        let drop = |rule: Rule| Some(Verdict::Drop(rule));
        // Trees whose every entry goes (directories when left empty).
        let whole_trees: &[(&[u8], Rule)] = &[
            (b"var/cache/dnf", DNF_YUM_CACHE),
            (b"var/cache/yum", DNF_YUM_CACHE),
            (b"usr/local/share/.cache/yarn", NPM_YARN_CACHE),
            (b"tmp", TMP),
            (b"var/tmp", TMP),
            (b"usr/share/man", MAN_INFO),
            (b"usr/local/share/man", MAN_INFO),
            (b"usr/share/info", MAN_INFO),
        ];
        for (tree, rule) in whole_trees {
            if below(path, tree).is_some() {
                return drop(*rule);
            }
        }
        // Files of trees whose directories a package manager expects.
        let file_trees: &[(&[u8], Rule)] = &[
            (b"var/cache/apt", APT_CACHE),
            (b"var/lib/apt/lists", APT_LISTS),
            (b"var/cache/apk", APK_CACHE),
            (b"var/log", LOGS),
        ];
        for (tree, rule) in file_trees {
            if !dir && below(path, tree).is_some() {
                return drop(*rule);
            }
        }
        if let Some(rest) = in_home(path) {
            let caches: &[(&[u8], Rule)] = &[
                (b".cache/pip", PIP_CACHE),
                (b".npm/_cacache", NPM_YARN_CACHE),
                (b".npm/_logs", NPM_YARN_CACHE),
                (b".cache/yarn", NPM_YARN_CACHE),
                (b".cache/go-build", GO_BUILD_CACHE),
            ];
            for (tree, rule) in caches {
                if below(rest, tree).is_some() {
                    return drop(*rule);
                }
            }
        }
        for docs in [
            &b"usr/share/doc"[..],
            b"usr/local/share/doc",
            b"usr/share/doc-base",
        ] {
            if below(path, docs).is_some() {
                let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
                // A package's doc directory may be a link to another's,
                // which holds its copyright.
                return match () {
                    _ if dir => drop(DOCS),
                    _ if symlink || (regular && is_licence(name)) => None,
                    _ => drop(DOCS),
                };
            }
        }
        for (locales, always) in [
            (&b"usr/share/locale"[..], &[][..]),
            (b"usr/lib/locale", &[&b"C.utf8"[..], b"C.UTF-8"][..]),
        ] {
            let Some(rest) = below(path, locales) else {
                continue;
            };
            let first = rest.split(|&b| b == b'/').next().unwrap_or(rest);
            // Files beside the language directories (locale.alias,
            // locale-archive) stay.
            let is_language_dir = rest.contains(&b'/') || dir;
            if is_language_dir
                && !always.contains(&first)
                && !self.languages.iter().any(|l| l == language(first))
            {
                return drop(LOCALES);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(rules: &SizeRules, path: &str, kind: EntryKind) -> Option<&'static str> {
        rules
            .select(path.as_bytes(), &kind)
            .and_then(Verdict::rule)
            .map(|r| RULES[r as usize].name)
    }

    #[test]
    fn caches_docs_and_locales_go_and_licences_and_expected_directories_stay() {
        let r = SizeRules::new(&["LANG=de_DE.UTF-8".into(), "PATH=/bin".into()]);
        let f = || EntryKind::File;
        let d = || EntryKind::Dir;
        assert_eq!(
            verdict(&r, "var/cache/apt/pkgcache.bin", f()),
            Some("apt-cache")
        );
        assert_eq!(verdict(&r, "var/cache/apt/archives/partial", d()), None);
        assert_eq!(
            verdict(&r, "var/lib/apt/lists/deb.debian.org_InRelease", f()),
            Some("apt-lists")
        );
        assert_eq!(verdict(&r, "var/lib/apt/lists/partial", d()), None);
        assert_eq!(verdict(&r, "var/lib/apt/extended_states", f()), None);
        assert_eq!(verdict(&r, "tmp", d()), None, "/tmp itself stays");
        assert_eq!(verdict(&r, "tmp/x/y", f()), Some("tmp"));
        assert_eq!(verdict(&r, "tmp/x", d()), Some("tmp"));
        assert_eq!(verdict(&r, "var/log", d()), None);
        assert_eq!(verdict(&r, "var/log/dpkg.log", f()), Some("logs"));
        assert_eq!(verdict(&r, "usr/share/doc/gcc/copyright", f()), None);
        assert_eq!(verdict(&r, "usr/share/doc/x/LICENSE.txt", f()), None);
        assert_eq!(verdict(&r, "usr/share/doc/x/README.gz", f()), Some("docs"));
        assert_eq!(
            verdict(
                &r,
                "usr/share/doc/libx",
                EntryKind::Symlink(b"liby".to_vec())
            ),
            None
        );
        assert_eq!(
            verdict(&r, "usr/share/doc", d()),
            None,
            "the doc root stays"
        );
        assert_eq!(
            verdict(&r, "usr/share/man/man1/ls.1.gz", f()),
            Some("man-info")
        );
        assert_eq!(
            verdict(&r, "usr/share/locale/fr/LC_MESSAGES/x.mo", f()),
            Some("locales")
        );
        assert_eq!(verdict(&r, "usr/share/locale/fr", d()), Some("locales"));
        assert_eq!(
            verdict(&r, "usr/share/locale/de/LC_MESSAGES/x.mo", f()),
            None
        );
        assert_eq!(
            verdict(&r, "usr/share/locale/de_AT/LC_MESSAGES/x.mo", f()),
            None
        );
        assert_eq!(verdict(&r, "usr/share/locale/locale.alias", f()), None);
        assert_eq!(verdict(&r, "usr/lib/locale/C.utf8/LC_CTYPE", f()), None);
        assert_eq!(
            verdict(&r, "usr/lib/locale/fr_FR.utf8/LC_CTYPE", f()),
            Some("locales")
        );
        assert_eq!(
            verdict(&r, "root/.cache/pip/http/x", f()),
            Some("pip-cache")
        );
        assert_eq!(
            verdict(&r, "home/app/.npm/_cacache/index", f()),
            Some("npm-yarn-cache")
        );
        assert_eq!(verdict(&r, "home/app/.npm/config", f()), None);
        assert_eq!(
            verdict(&r, "root/.cache/go-build/ab/cd", f()),
            Some("go-build-cache")
        );
        assert_eq!(verdict(&r, "usr/bin/gcc", f()), None);
        assert_eq!(verdict(&r, "srv/tmp/x", f()), None, "only the top /tmp");
    }
}
