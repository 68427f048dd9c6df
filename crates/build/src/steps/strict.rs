//! The service's rules for a tenant's Containerfile: what builderd's own
//! checks (`run_mounts`, `from_lines`) cannot read exactly as buildah 1.28
//! reads it is refused, not guessed at. buildah's lexer strips escapes and
//! quotes from flag words and expands variables in them, joins a continued
//! line to the next without a space, takes an `# escape=` directive only
//! first, drops a byte-order mark, and carries a mount's type over to the
//! next `--mount`; so a text that leans on any of these is refused here.
//! Bind mounts are refused too: buildah 1.28 follows a symlink in a bind
//! mount's source out of the context (CVE-2024-1753), and a Git checkout
//! keeps its symlinks.

use anyhow::Result;

use crate::error::SourceError;

/// The mount options a tenant may use (per type, besides `type`).
const CACHE_OPTIONS: [&str; 8] = [
    "id",
    "target",
    "dst",
    "destination",
    "uid",
    "gid",
    "mode",
    "sharing",
];
const SECRET_OPTIONS: [&str; 8] = [
    "id",
    "target",
    "dst",
    "destination",
    "required",
    "mode",
    "uid",
    "gid",
];
const TMPFS_OPTIONS: [&str; 4] = ["target", "dst", "destination", "size"];
/// The flags each instruction may have.
const COPY_FLAGS: [&str; 3] = ["--from=", "--chown=", "--chmod="];

/// Checks `text` against the service's rules.
pub fn check(text: &str) -> Result<()> {
    let refuse = |line: usize, why: &str| -> anyhow::Error {
        SourceError(format!("the Containerfile's line {line}: {why}")).into()
    };
    if text.starts_with('\u{feff}') {
        return Err(refuse(1, "a byte-order mark is not taken"));
    }
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        if raw.contains(['\r', '\u{b}', '\u{c}']) {
            return Err(refuse(
                line,
                "carriage returns and other line breaks are not taken",
            ));
        }
        let trimmed = raw.trim();
        if let Some(comment) = trimmed.strip_prefix('#') {
            let directive = comment.trim_start().to_ascii_lowercase();
            if directive.starts_with("escape") && directive.contains('=') {
                return Err(refuse(line, "an escape directive is not taken"));
            }
            continue;
        }
        // A continued line ends with a space or tab before its `\`, so the
        // joined words are the same however the lines are joined.
        if let Some(body) = trimmed.strip_suffix('\\') {
            if !body.is_empty() && !body.ends_with([' ', '\t']) {
                return Err(refuse(
                    line,
                    "a line continued inside a word (put a space before the \\)",
                ));
            }
        }
    }
    for (line, instruction) in super::instructions::instructions(text) {
        let mut words = instruction.split_whitespace();
        let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
        let rest: Vec<&str> = words.collect();
        let flags: Vec<&str> = rest
            .iter()
            .copied()
            .take_while(|w| w.starts_with("--"))
            .collect();
        for flag in &flags {
            if !flag.is_ascii() || flag.contains(['\\', '"', '\'', '$']) {
                return Err(refuse(
                    line,
                    &format!(
                        "the flag {flag:?} is written plainly here (no escapes, quotes, variables)"
                    ),
                ));
            }
        }
        match keyword.as_str() {
            "ONBUILD" => return Err(refuse(line, "ONBUILD is not taken")),
            "RUN" => {
                for flag in &flags {
                    let spec = flag.strip_prefix("--mount=").ok_or_else(|| {
                        refuse(line, &format!("RUN takes --mount only, not {flag}"))
                    })?;
                    mount(spec).map_err(|why| refuse(line, &format!("--mount={spec}: {why}")))?;
                }
            }
            "COPY" | "ADD" => {
                if let Some(flag) = flags
                    .iter()
                    .find(|f| !COPY_FLAGS.iter().any(|k| f.starts_with(k)))
                {
                    return Err(refuse(
                        line,
                        &format!("{keyword} takes --from, --chown and --chmod, not {flag}"),
                    ));
                }
                if keyword == "ADD" {
                    let sources = &rest[flags.len()..];
                    if sources.first().is_some_and(|w| w.starts_with('['))
                        || sources
                            .iter()
                            .any(|w| w.contains(['$', '\\']) || w.contains("://"))
                    {
                        return Err(refuse(
                            line,
                            "ADD takes files of the context here (no URL, variable or JSON form): fetch in a RUN step on the egress network",
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One mount's spec: an explicit type of cache, secret or tmpfs, with its
/// plain options only.
fn mount(spec: &str) -> Result<(), String> {
    let fields: Vec<(&str, &str)> = spec
        .split(',')
        .map(|f| f.split_once('=').unwrap_or((f, "")))
        .collect();
    let kind = fields
        .iter()
        .find(|(k, _)| *k == "type")
        .map(|(_, v)| *v)
        .ok_or("every mount names its type here")?;
    let allowed: &[&str] = match kind {
        "cache" => &CACHE_OPTIONS,
        "secret" => &SECRET_OPTIONS,
        "tmpfs" => &TMPFS_OPTIONS,
        "bind" => {
            return Err(
                "bind mounts are not taken here (COPY the files instead): buildah follows their links out of the context"
                    .into(),
            )
        }
        other => return Err(format!("the mount type {other:?} is not taken")),
    };
    for (key, value) in &fields {
        if *key != "type" && !allowed.contains(key) {
            return Err(format!(
                "the option {key:?} is not taken for a {kind} mount"
            ));
        }
        if *key == "sharing" && *value == "locked" {
            return Err("sharing=locked is not taken (shared or private are)".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_buildah_would_read_otherwise_is_refused() {
        for (text, why) in [
            ("\u{feff}FROM x\n", "byte-order mark"),
            ("# syntax=x\n# escape=`\nFROM x\n", "escape directive"),
            ("FROM x\r\nRUN true\r\n", "carriage returns"),
            (
                "FROM x\nRUN --mount=type=cache,id=a\\\n/../../etc,target=/h ls\n",
                "inside a word",
            ),
            (
                "FROM x\nRUN --mo\\unt=type=cache,target=/h ls\n",
                "written plainly",
            ),
            ("FROM x\nCOPY --\"from\"=evil/x /a /a\n", "written plainly"),
            (
                "FROM x\nRUN --mount=type=cache,id=a,target=/a --mount=id=b,target=/h ls\n",
                "names its type",
            ),
            (
                "FROM x\nRUN --mount=type=bind,source=d/etc,target=/h ls\n",
                "bind mounts",
            ),
            (
                "FROM x\nRUN --mount=type=cache,target=/h,U ls\n",
                "option \"U\"",
            ),
            (
                "FROM x\nRUN --mount=type=cache,target=/h,sharing=locked ls\n",
                "sharing=locked",
            ),
            ("FROM x\nRUN --network=host ls\n", "--mount only"),
            ("FROM x\nCOPY --link a /a\n", "not --link"),
            ("FROM x\nARG U=http://h/\nADD $U /m\n", "ADD takes files"),
            (
                "FROM x\nADD [\"http:\\/\\/h/\", \"/m\"]\n",
                "ADD takes files",
            ),
            ("FROM x\nADD https://h/x /m\n", "ADD takes files"),
            ("FROM x\nONBUILD RUN true\n", "ONBUILD"),
        ] {
            let err = check(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn plain_containerfiles_pass() {
        let text = "# syntax=docker/dockerfile:1\nFROM x AS build\n\
                    RUN --mount=type=cache,target=/root/.npm,sharing=shared \\\n    \
                    --mount=type=secret,id=npm npm ci\n\
                    COPY --from=build --chown=1:1 /a /a\nADD files.tar /srv/\n\
                    RUN echo \"quoted $HOME \\\\ fine\" && echo à\n";
        check(text).unwrap();
    }
}
