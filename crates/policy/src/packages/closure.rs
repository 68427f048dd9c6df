//! Which development packages go: those no package that stays depends on,
//! whatever the package manager. A dependency a kept package has on a
//! development package (directly, through a virtual name, or through a
//! chain of development packages) keeps it, and says why.

use std::collections::HashMap;

/// One installed package, as the closure sees it.
#[derive(Clone, Debug, Default)]
pub struct Pkg {
    pub name: String,
    /// Names it provides besides its own.
    pub provides: Vec<String>,
    /// Each group is satisfied by any one of its names.
    pub depends: Vec<Vec<String>>,
    /// A development package that may go.
    pub candidate: bool,
}

/// An installed package with what the report and the removal need.
#[derive(Clone, Debug, Default)]
pub struct Installed {
    pub pkg: Pkg,
    /// Its installed size, as the database gives it.
    pub bytes: u64,
    /// Its paths, as the database lists them (normalised).
    pub paths: Vec<Vec<u8>>,
}

/// What becomes of each package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    Keep,
    Remove,
    /// A candidate that stays: the package that needs it and the
    /// dependency that names it.
    Needed {
        by: usize,
        dependency: String,
    },
}

pub fn decide(pkgs: &[Pkg]) -> Vec<Fate> {
    // By own name (a versioned relation, written `=NAME`, takes only
    // these), and by own or provided name.
    let mut own: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut providers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in pkgs.iter().enumerate() {
        own.entry(p.name.as_str()).or_default().push(i);
        providers.entry(p.name.as_str()).or_default().push(i);
        for v in &p.provides {
            providers.entry(v.as_str()).or_default().push(i);
        }
    }
    let mut fate: Vec<Fate> = pkgs
        .iter()
        .map(|p| {
            if p.candidate {
                Fate::Remove
            } else {
                Fate::Keep
            }
        })
        .collect();
    let mut queue: Vec<usize> = (0..pkgs.len()).filter(|&i| fate[i] == Fate::Keep).collect();
    while let Some(i) = queue.pop() {
        for group in &pkgs[i].depends {
            let of = |name: &String| {
                match name.strip_prefix('=') {
                    Some(n) => own.get(n),
                    None => providers.get(name.as_str()),
                }
                .into_iter()
                .flatten()
                .copied()
            };
            if group.iter().flat_map(of).any(|j| fate[j] != Fate::Remove) {
                continue;
            }
            // Unsatisfied as things stand: keep the first candidate that
            // satisfies it (none: it was unsatisfied before, not our doing).
            if let Some(j) = group.iter().flat_map(of).next() {
                let names: Vec<&str> = group.iter().map(|n| n.trim_start_matches('=')).collect();
                fate[j] = Fate::Needed {
                    by: i,
                    dependency: names.join(" | "),
                };
                queue.push(j);
            }
        }
    }
    fate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, depends: &[&[&str]], candidate: bool) -> Pkg {
        Pkg {
            name: name.into(),
            provides: vec![],
            depends: depends
                .iter()
                .map(|g| g.iter().map(|s| s.to_string()).collect())
                .collect(),
            candidate,
        }
    }

    fn provider(name: &str, provides: &str) -> Pkg {
        Pkg {
            provides: vec![provides.into()],
            ..pkg(name, &[], true)
        }
    }

    #[test]
    fn kept_packages_keep_what_they_need_through_chains_virtuals_and_alternatives() {
        let mut virt = pkg("libz-dev", &[], true);
        virt.provides = vec!["zlib-dev".into()];
        let pkgs = vec![
            pkg("app", &[&["libfoo-dev"], &["zlib-dev"]], false),
            pkg("libfoo-dev", &[&["libbar-dev"]], true),
            pkg("libbar-dev", &[], true),
            virt,
            pkg("gcc", &[&["cpp"]], true),
            pkg("cpp", &[], true),
            pkg("tool", &[&["missing", "make"], &["gone-entirely"]], false),
            pkg("make", &[], true),
            pkg("unrelated", &[&["libc6"]], false),
            // A versioned relation: a provider of the name does not do.
            pkg("strict", &[&["=libqux-dev"]], false),
            provider("qux-compat-dev", "libqux-dev"),
            pkg("libqux-dev", &[], true),
        ];
        let fate = decide(&pkgs);
        assert_eq!(
            fate[1],
            Fate::Needed {
                by: 0,
                dependency: "libfoo-dev".into()
            }
        );
        assert_eq!(
            fate[2],
            Fate::Needed {
                by: 1,
                dependency: "libbar-dev".into()
            }
        );
        assert_eq!(
            fate[3],
            Fate::Needed {
                by: 0,
                dependency: "zlib-dev".into()
            }
        );
        assert_eq!(fate[4], Fate::Remove);
        assert_eq!(fate[5], Fate::Remove, "only a removed package needs it");
        assert_eq!(
            fate[7],
            Fate::Needed {
                by: 6,
                dependency: "missing | make".into()
            }
        );
        assert_eq!(fate[8], Fate::Keep);
        assert_eq!(fate[10], Fate::Remove);
        assert_eq!(
            fate[11],
            Fate::Needed {
                by: 9,
                dependency: "libqux-dev".into()
            }
        );
    }
}
