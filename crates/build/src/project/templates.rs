//! Build-arg values that name what was built: `{{.GitCommit}}`,
//! `{{.GitShortCommit}}`, `{{.GitRef}}`, `{{.GitBranch}}`, `{{.GitTag}}`
//! and `{{.BuildID}}` (spaces inside the braces allowed). An unknown name
//! is refused before anything runs; anything else is left as written.

use anyhow::Result;

use super::fetch::Fetched;
use crate::error::SourceError;

const NAMES: [&str; 6] = [
    "GitCommit",
    "GitShortCommit",
    "GitRef",
    "GitBranch",
    "GitTag",
    "BuildID",
];

/// Refuses a value that names something no build has.
pub fn check(args: &[(String, String)]) -> Result<()> {
    for (key, value) in args {
        for name in names_in(value) {
            if !NAMES.contains(&name.as_str()) {
                return Err(SourceError(format!(
                    "the build arg {key}: {{{{.{name}}}}} is not a name builderd fills in \
                     (it knows {})",
                    NAMES.map(|n| format!("{{{{.{n}}}}}")).join(", ")
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// `args` with each name filled in; a Git name in a build without a Git
/// source is refused.
pub fn expand(
    args: &[(String, String)],
    fetched: Option<&Fetched>,
    build_id: &str,
) -> Result<Vec<(String, String)>> {
    check(args)?;
    args.iter()
        .map(|(key, value)| {
            let mut out = String::new();
            let mut rest = value.as_str();
            while let Some((before, name, after)) = next_name(rest) {
                out.push_str(before);
                let filled = match (name, fetched) {
                    ("BuildID", _) => build_id.to_string(),
                    (_, None) => {
                        return Err(SourceError(format!(
                            "the build arg {key}: {{{{.{name}}}}} needs a Git source"
                        ))
                        .into())
                    }
                    ("GitCommit", Some(f)) => f.commit.clone(),
                    ("GitShortCommit", Some(f)) => f.commit[..12.min(f.commit.len())].to_string(),
                    ("GitRef", Some(f)) => f.ref_name.clone().unwrap_or_else(|| f.commit.clone()),
                    ("GitBranch", Some(f)) => f.branch().unwrap_or_default().to_string(),
                    ("GitTag", Some(f)) => f.tag().unwrap_or_default().to_string(),
                    _ => unreachable!("checked above"),
                };
                out.push_str(&filled);
                rest = after;
            }
            out.push_str(rest);
            Ok((key.clone(), out))
        })
        .collect()
}

fn names_in(value: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some((_, name, after)) = next_name(rest) {
        names.push(name.to_string());
        rest = after;
    }
    names
}

/// The text before the first `{{ .Name }}`, the name, the text after.
fn next_name(s: &str) -> Option<(&str, &str, &str)> {
    let start = s.find("{{")?;
    let end = start + s[start..].find("}}")?;
    let inner = s[start + 2..end].trim();
    let name = inner.strip_prefix('.').unwrap_or(inner);
    Some((&s[..start], name, &s[end + 2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_are_filled_in_and_unknown_ones_refused() {
        let fetched = Fetched {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            ref_name: Some("refs/tags/v1.2".into()),
        };
        let out = expand(
            &args(&[
                ("V", "{{.GitCommit}}"),
                ("S", "app-{{ .GitShortCommit }}-{{.BuildID}}"),
                ("R", "{{.GitRef}}|{{.GitTag}}|{{.GitBranch}}"),
                ("P", "plain {{ value"),
            ]),
            Some(&fetched),
            "b-7",
        )
        .unwrap();
        assert_eq!(out[0].1, fetched.commit);
        assert_eq!(out[1].1, "app-0123456789ab-b-7");
        assert_eq!(out[2].1, "refs/tags/v1.2|v1.2|");
        assert_eq!(out[3].1, "plain {{ value");
        let err = check(&args(&[("X", "{{.GitSecret}}")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GitSecret") && err.contains("{{.GitCommit}}"),
            "{err}"
        );
        assert!(expand(&args(&[("X", "{{.GitCommit}}")]), None, "b").is_err());
        assert_eq!(
            expand(&args(&[("X", "{{.BuildID}}")]), None, "b").unwrap()[0].1,
            "b"
        );
    }
}
