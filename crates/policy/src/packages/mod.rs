//! `remove_dev_packages`: development packages removed by the image's own
//! package database (dpkg or apk), read before the flatten; their files go
//! in the flatten pass unless a package that stays owns them too, and the
//! database is rewritten so that the package manager stays consistent.

mod apk;
mod closure;
mod dpkg;

use std::collections::{BTreeMap, BTreeSet, HashSet};

pub use builderd_flatten::Found;
use serde::Serialize;

use closure::{decide, Fate, Installed, Pkg};

/// Top-level directories a merged-/usr image has as links into /usr:
/// a package that lists `/lib/x` has its file at `usr/lib/x`.
const MERGED: &[&[u8]] = &[b"bin", b"sbin", b"lib", b"lib32", b"lib64", b"libx32"];

/// Databases of package managers builderd does not read, by a file each has.
const OTHER_MANAGERS: &[(&[u8], &str)] = &[
    (b"var/lib/rpm/Packages", "rpm"),
    (b"var/lib/rpm/rpmdb.sqlite", "rpm"),
    (b"usr/lib/sysimage/rpm/rpmdb.sqlite", "rpm"),
    (b"usr/lib/sysimage/rpm/Packages", "rpm"),
    (b"var/lib/pacman/local/ALPM_DB_VERSION", "pacman"),
];

/// The directories that hold the databases read.
const DATABASE_DIRS: &[&[u8]] = &[
    b"var/lib/dpkg/info",
    b"var/lib/dpkg/alternatives",
    b"var/lib/dpkg/triggers",
    b"lib/apk/db",
    b"var/lib/rpm",
    b"usr/lib/sysimage/rpm",
    b"var/lib/pacman/local",
];

/// Is `path` a directory that holds (or is on the way to) what the plan
/// reads? An upper layer's non-directory or whiteout there hides it.
pub fn within(path: &[u8]) -> bool {
    DATABASE_DIRS.iter().any(|d| {
        d.strip_prefix(path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
    })
}

/// The entries of the final tree the plan needs, read before the flatten.
pub fn wanted(path: &[u8]) -> bool {
    dpkg::wanted(path)
        || path == apk::INSTALLED
        || path == apk::WORLD
        || MERGED.contains(&path)
        || OTHER_MANAGERS.iter().any(|(p, _)| *p == path)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PackageBytes {
    pub name: String,
    /// Its installed size, as the database gives it.
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KeptPackage {
    pub name: String,
    pub bytes: u64,
    /// The package that stays and needs it.
    pub needed_by: String,
    /// The dependency of `needed_by` that names it.
    pub dependency: String,
}

/// What `remove_dev_packages` did, for OUT.json.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PackagesReport {
    /// The package managers whose databases were read.
    pub managers: Vec<&'static str>,
    pub removed: Vec<PackageBytes>,
    pub kept_because_needed: Vec<KeptPackage>,
    /// Packages beyond [`LISTED_PACKAGES`] a list: counted, not named (a
    /// database is the image's, and the report goes into the metadata).
    #[serde(skip_serializing_if = "is_zero")]
    pub not_listed: u64,
    pub warnings: Vec<String>,
}

/// Packages listed at most in each of the report's lists.
pub const LISTED_PACKAGES: usize = 1000;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The removal decided from the database.
#[derive(Debug, Default)]
pub struct Removal {
    /// Paths of removed packages that no package that stays lists.
    files: HashSet<Vec<u8>>,
    /// dpkg's own files of removed packages, and removed alternatives.
    database: HashSet<Vec<u8>>,
    removed_dpkg: BTreeSet<String>,
    /// Database files rewritten, with their new content.
    pub replace: BTreeMap<Vec<u8>, Vec<u8>>,
    pub warnings: Vec<String>,
    pub report: PackagesReport,
}

impl Removal {
    /// Is `path` a file of a removed package?
    pub fn drops(&self, path: &[u8]) -> bool {
        self.files.contains(path)
    }

    /// Is `path` part of the database that goes with the removed packages?
    pub fn drops_database(&self, path: &[u8]) -> bool {
        self.database.contains(path) || dpkg::is_info_of(path, &self.removed_dpkg)
    }
}

/// Where a path a package lists is in this image.
fn canonical(path: &[u8], merged: &[&[u8]]) -> Vec<u8> {
    let first = path.split(|&b| b == b'/').next().unwrap_or(path);
    if merged.contains(&first) {
        [&b"usr/"[..], path].concat()
    } else {
        path.to_vec()
    }
}

/// Decides for `pkgs`; fills the report and the paths that go. Answers
/// which of them go.
fn apply(pkgs: &[&Installed], merged: &[&[u8]], removal: &mut Removal) -> Vec<bool> {
    let plain: Vec<Pkg> = pkgs.iter().map(|i| i.pkg.clone()).collect();
    let fates = decide(&plain);
    let mut kept_paths = HashSet::new();
    for (i, fate) in pkgs.iter().zip(&fates) {
        if *fate != Fate::Remove {
            kept_paths.extend(i.paths.iter().map(|f| canonical(f, merged)));
        }
    }
    let mut gone = Vec::new();
    for (Installed { pkg, bytes, paths }, fate) in pkgs.iter().copied().zip(&fates) {
        match fate {
            Fate::Keep => gone.push(false),
            Fate::Remove => {
                for f in paths {
                    let at = canonical(f, merged);
                    if !kept_paths.contains(&at) {
                        removal.files.insert(at);
                    }
                }
                if removal.report.removed.len() < LISTED_PACKAGES {
                    removal.report.removed.push(PackageBytes {
                        name: pkg.name.clone(),
                        bytes: *bytes,
                    });
                } else {
                    removal.report.not_listed += 1;
                }
                gone.push(true);
            }
            Fate::Needed { by, dependency } => {
                if removal.report.kept_because_needed.len() < LISTED_PACKAGES {
                    removal.report.kept_because_needed.push(KeptPackage {
                        name: pkg.name.clone(),
                        bytes: *bytes,
                        needed_by: pkgs[*by].pkg.name.clone(),
                        dependency: dependency.clone(),
                    });
                } else {
                    removal.report.not_listed += 1;
                }
                gone.push(false);
            }
        }
    }
    gone
}

/// The removal for an image whose final tree has `found` (see [`wanted`]);
/// an error when a database is too large to read.
pub fn plan(found: &BTreeMap<Vec<u8>, Found>) -> Result<Removal, String> {
    let mut removal = Removal::default();
    for db in [dpkg::STATUS, apk::INSTALLED] {
        if found.get(db) == Some(&Found::LargeFile) {
            return Err(format!(
                "/{} is larger than builderd reads; build without --remove-dev-packages",
                String::from_utf8_lossy(db)
            ));
        }
    }
    let merged: Vec<&[u8]> = MERGED
        .iter()
        .copied()
        .filter(|top| {
            matches!(found.get(*top), Some(Found::Symlink(t))
                if t.strip_prefix(b"/").unwrap_or(t) == [&b"usr/"[..], top].concat())
        })
        .collect();
    if let Some(Found::File(status)) = found.get(dpkg::STATUS) {
        removal.report.managers.push("dpkg");
        let status = String::from_utf8_lossy(status);
        let (all, pkgs) = dpkg::packages(&status, found);
        // A package whose files are not known could share any of them.
        if let Some(unlisted) = pkgs.iter().find(|e| e.stem.is_none()) {
            removal.warnings.push(format!(
                "dpkg's package {} has no file list it can be told apart by (/var/lib/dpkg/info/{}.list): no package was removed",
                unlisted.installed.pkg.name, unlisted.installed.pkg.name
            ));
        } else {
            let listed: Vec<&Installed> = pkgs.iter().map(|e| &e.installed).collect();
            let gone = apply(&listed, &merged, &mut removal);
            let removed: Vec<&dpkg::Entry> = pkgs
                .iter()
                .zip(&gone)
                .filter(|(_, g)| **g)
                .map(|(e, _)| e)
                .collect();
            removal.removed_dpkg = removed.iter().filter_map(|e| e.stem.clone()).collect();
            if !removed.is_empty() {
                let stanzas: BTreeSet<usize> = removed.iter().map(|e| e.stanza).collect();
                removal
                    .replace
                    .insert(dpkg::STATUS.to_vec(), dpkg::rewrite_status(&all, &stanzas));
                let (gone, warnings) = dpkg::alternatives(found, &|p| removal.drops(p));
                removal.database.extend(gone);
                removal.warnings.extend(warnings);
                let names: BTreeSet<String> = removed
                    .iter()
                    .map(|e| e.installed.pkg.name.clone())
                    .collect();
                removal.replace.extend(dpkg::triggers(found, &names));
            }
        }
    }
    if let Some(Found::File(installed)) = found.get(apk::INSTALLED) {
        removal.report.managers.push("apk");
        let installed = String::from_utf8_lossy(installed);
        let pkgs = apk::packages(&installed);
        let listed: Vec<&Installed> = pkgs.iter().map(|(_, i)| i).collect();
        let gone = apply(&listed, &merged, &mut removal);
        if gone.iter().any(|g| *g) {
            let stanzas: Vec<(&str, bool)> = pkgs
                .iter()
                .zip(&gone)
                .map(|((t, ..), g)| (*t, *g))
                .collect();
            removal
                .replace
                .insert(apk::INSTALLED.to_vec(), apk::rewrite_installed(&stanzas));
            let removed: BTreeSet<String> = pkgs
                .iter()
                .zip(&gone)
                .filter(|(_, g)| **g)
                .map(|((_, i), _)| i.pkg.name.clone())
                .collect();
            if let Some(Found::File(world)) = found.get(apk::WORLD) {
                removal.replace.insert(
                    apk::WORLD.to_vec(),
                    apk::rewrite_world(&String::from_utf8_lossy(world), &removed),
                );
            }
        }
    }
    for (path, manager) in OTHER_MANAGERS {
        if found.contains_key(*path) && !removal.warnings.iter().any(|w| w.contains(manager)) {
            removal.warnings.push(format!(
                "the image has a {manager} package database, which builderd does not read: none of its packages was removed"
            ));
        }
    }
    if removal.report.managers.is_empty() && removal.warnings.is_empty() {
        removal.warnings.push(
            "the image has no package database builderd reads (dpkg or apk): no package was removed"
                .into(),
        );
    }
    removal.report.warnings = removal.warnings.clone();
    Ok(removal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(r: &Removal) -> Vec<&str> {
        r.report.removed.iter().map(|p| p.name.as_str()).collect()
    }

    fn file(text: &str) -> Found {
        Found::File(text.as_bytes().to_vec())
    }

    #[test]
    fn a_dpkg_database_loses_unneeded_dev_packages_and_keeps_needed_ones() {
        let status = "Package: libc6\nStatus: install ok installed\nPriority: optional\nSection: libs\nInstalled-Size: 10\nArchitecture: amd64\n\n\
Package: gcc\nStatus: install ok installed\nSection: devel\nInstalled-Size: 2\nArchitecture: amd64\nDepends: libc6-dev | libc-dev\n\n\
Package: libc6-dev\nStatus: install ok installed\nSection: libdevel\nInstalled-Size: 3\nArchitecture: amd64\nProvides: libc-dev\n\n\
Package: app\nStatus: install ok installed\nSection: web\nInstalled-Size: 1\nArchitecture: all\nDepends: libfoo-dev (>= 1)\nDescription: an app\n that needs headers\n\n\
Package: libfoo-dev\nStatus: install ok installed\nSection: libdevel\nInstalled-Size: 4\nArchitecture: amd64\n\n\
Package: old-dev\nStatus: deinstall ok config-files\nSection: libdevel\n\n";
        let mut found = BTreeMap::new();
        found.insert(b"var/lib/dpkg/status".to_vec(), file(status));
        found.insert(b"lib".to_vec(), Found::Symlink(b"usr/lib".to_vec()));
        found.insert(
            b"var/lib/dpkg/info/libc6:amd64.list".to_vec(),
            file("/.\n/lib\n/lib/x86_64-linux-gnu/libc.so.6\n/usr/share/doc/libc6\n"),
        );
        found.insert(
            b"var/lib/dpkg/info/gcc.list".to_vec(),
            file("/.\n/usr/bin/gcc\n/usr/share/doc/libc6\n"),
        );
        found.insert(
            b"var/lib/dpkg/info/libc6-dev:amd64.list".to_vec(),
            file("/usr/include\n/usr/include/stdio.h\n/lib/x86_64-linux-gnu/libc.so.6\n"),
        );
        found.insert(
            b"var/lib/dpkg/info/app.list".to_vec(),
            file("/usr/bin/app\n"),
        );
        found.insert(
            b"var/lib/dpkg/info/libfoo-dev:amd64.list".to_vec(),
            file("/usr/include/foo.h\n"),
        );
        found.insert(b"var/lib/dpkg/alternatives/cc".to_vec(), file("auto\n/usr/bin/cc\ncc.1.gz\n/usr/share/man/man1/cc.1.gz\n\n/usr/bin/gcc\n20\n/usr/share/man/man1/gcc.1.gz\n\n"));
        found.insert(
            b"var/lib/dpkg/triggers/File".to_vec(),
            file("/usr/include gcc\n/usr/lib/x86_64-linux-gnu libc-bin\n"),
        );
        let r = plan(&found).unwrap();
        let names = |v: &[PackageBytes]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&r.report.removed), ["gcc", "libc6-dev"]);
        assert_eq!(r.report.removed[0].bytes, 2048);
        assert_eq!(r.report.kept_because_needed.len(), 1);
        let kept = &r.report.kept_because_needed[0];
        assert_eq!(
            (
                kept.name.as_str(),
                kept.needed_by.as_str(),
                kept.dependency.as_str()
            ),
            ("libfoo-dev", "app", "libfoo-dev")
        );
        assert!(r.drops(b"usr/bin/gcc"));
        assert!(r.drops(b"usr/include/stdio.h"));
        assert!(
            r.drops(b"usr/include"),
            "a directory only removed packages list"
        );
        assert!(
            !r.drops(b"usr/lib/x86_64-linux-gnu/libc.so.6"),
            "libc6 lists it too (through /lib)"
        );
        assert!(!r.drops(b"usr/share/doc/libc6"));
        assert!(r.drops_database(b"var/lib/dpkg/info/gcc.md5sums"));
        assert!(r.drops_database(b"var/lib/dpkg/info/libc6-dev:amd64.list"));
        assert!(!r.drops_database(b"var/lib/dpkg/info/libc6:amd64.list"));
        for alt in [
            &b"var/lib/dpkg/alternatives/cc"[..],
            b"etc/alternatives/cc",
            b"usr/bin/cc",
            b"etc/alternatives/cc.1.gz",
            b"usr/share/man/man1/cc.1.gz",
        ] {
            assert!(r.drops_database(alt), "{}", String::from_utf8_lossy(alt));
        }
        let new_status = String::from_utf8(r.replace[&b"var/lib/dpkg/status"[..]].clone()).unwrap();
        assert!(
            !new_status.contains("Package: gcc\n") && !new_status.contains("Package: libc6-dev\n")
        );
        assert!(
            new_status.contains("Package: app\n") && new_status.contains(" that needs headers\n\n")
        );
        assert!(
            new_status.contains("Package: old-dev\n"),
            "not installed: left as it is"
        );
        assert_eq!(
            r.replace[&b"var/lib/dpkg/triggers/File"[..]],
            b"/usr/lib/x86_64-linux-gnu libc-bin\n"
        );
    }

    #[test]
    fn an_apk_database_keeps_a_dev_package_whose_so_a_kept_package_needs() {
        let mut found = BTreeMap::new();
        found.insert(b"lib/apk/db/installed".to_vec(), file(
            "P:libfoo-dev\nV:1\np:so:libfoo.so.1=1\nI:100\nF:usr/lib\nR:libfoo.so.1\nF:usr/include\nR:foo.h\n\n\
P:app\nV:1\nD:so:libfoo.so.1\nF:usr/bin\nR:app\n\n\
P:gcc\nV:12\nI:5000\nF:usr/bin\nR:gcc\n\n"));
        found.insert(b"lib/apk/world".to_vec(), file("app\ngcc\n"));
        let r = plan(&found).unwrap();
        assert_eq!(r.report.managers, ["apk"]);
        assert_eq!(removed(&r), ["gcc"]);
        assert_eq!(r.report.kept_because_needed[0].needed_by, "app");
        assert_eq!(r.report.kept_because_needed[0].dependency, "so:libfoo.so.1");
        assert!(r.drops(b"usr/bin/gcc"));
        assert!(!r.drops(b"usr/bin"), "app lists it");
        assert!(!r.drops(b"usr/include/foo.h"));
        assert_eq!(r.replace[&b"lib/apk/world"[..]], b"app\n");
        let installed = String::from_utf8(r.replace[&b"lib/apk/db/installed"[..]].clone()).unwrap();
        assert!(installed.contains("P:app\n") && !installed.contains("P:gcc\n"));
    }

    #[test]
    fn half_installed_packages_keep_what_they_need_and_unknown_files_stop_the_removal() {
        let status = "Package: tool\nStatus: install ok half-configured\nSection: utils\nArchitecture: all\nDepends: libx-dev\n\n\
Package: libx-dev\nStatus: install ok installed\nSection: libdevel\nArchitecture: all\n\n\
Package: make\nStatus: install ok installed\nSection: devel\nArchitecture: amd64\n\n";
        let mut found = BTreeMap::new();
        found.insert(b"var/lib/dpkg/status".to_vec(), file(status));
        for list in ["tool", "libx-dev", "make"] {
            found.insert(
                format!("var/lib/dpkg/info/{list}.list").into_bytes(),
                file("/usr/share/x\n"),
            );
        }
        let r = plan(&found).unwrap();
        assert_eq!(removed(&r), ["make"]);
        assert_eq!(r.report.kept_because_needed[0].needed_by, "tool");
        found.remove(&b"var/lib/dpkg/info/tool.list"[..]);
        let r = plan(&found).unwrap();
        assert!(r.report.removed.is_empty());
        assert!(
            r.warnings[0].contains("tool has no file list"),
            "{:?}",
            r.warnings
        );
        found.insert(b"var/lib/dpkg/status".to_vec(), Found::LargeFile);
        assert!(plan(&found)
            .unwrap_err()
            .contains("larger than builderd reads"));
    }

    #[test]
    fn other_or_no_package_managers_only_warn() {
        let mut found = BTreeMap::new();
        found.insert(b"var/lib/rpm/rpmdb.sqlite".to_vec(), Found::LargeFile);
        let r = plan(&found).unwrap();
        assert!(r.report.removed.is_empty());
        assert!(
            r.warnings[0].contains("rpm package database"),
            "{:?}",
            r.warnings
        );
        let r = plan(&BTreeMap::new()).unwrap();
        assert!(
            r.warnings[0].contains("no package database"),
            "{:?}",
            r.warnings
        );
    }
}
