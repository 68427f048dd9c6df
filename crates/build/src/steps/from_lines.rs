//! The `FROM` lines of a Containerfile, each image pinned before the build:
//! builderd pulls it itself (so its address is checked first), reads its
//! `ONBUILD` triggers (which buildah runs in the child build as if the
//! Containerfile held them, mounts and all), and the build names it by
//! its image id, so the image checked is the image built on, whatever a
//! tag says by then.

use anyhow::Result;

use crate::error::SourceError;

/// `text` with each `FROM` of an image (not of an earlier stage, not
/// `scratch`) replaced by what `pin` answers for it, its variables
/// expanded first from the `ARG`s before the first `FROM` and
/// `build_args`; so too each `COPY --from=IMAGE`. Unless `own` (a
/// person's own command line), nothing else may reach out from the build
/// host: a `--from` or mount `from` naming an image that was not pinned,
/// and `ADD` of a URL, which buildah fetches from the host's own network,
/// are refused.
pub fn pin(
    text: &str,
    build_args: &[(String, String)],
    own: bool,
    pin: &mut dyn FnMut(&str) -> Result<String>,
) -> Result<String> {
    let escape = super::instructions::escape_char(text);
    let mut args: Vec<(String, String)> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut continued = false;
    let mut seen_from = false;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let was_continued = continued;
        let trimmed = line.trim();
        // A comment line is dropped whole (never continued); a blank one
        // or a comment inside a continued instruction keeps it going.
        continued = match trimmed.starts_with('#') || trimmed.is_empty() {
            true => was_continued,
            false => trimmed.ends_with(escape),
        };
        let mut words = trimmed.split_whitespace();
        let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
        if was_continued || trimmed.starts_with('#') {
            out.push_str(line);
            continue;
        }
        match keyword.as_str() {
            "ARG" if !seen_from => {
                for word in words {
                    let (name, value) = word.split_once('=').unwrap_or((word, ""));
                    let value = value.trim_matches('"').to_string();
                    let given = build_args.iter().find(|(k, _)| k == name);
                    let value = given.map(|(_, v)| v.clone()).unwrap_or(value);
                    args.push((name.to_string(), value));
                }
                out.push_str(line);
            }
            "FROM" => {
                seen_from = true;
                if continued {
                    return Err(refused(i, "a FROM instruction is one line"));
                }
                let words: Vec<&str> = words.collect();
                let flags = words.iter().take_while(|w| w.starts_with("--")).count();
                let (image, rest) = match words[flags..] {
                    [image] => (image, None),
                    [image, as_, name] if as_.eq_ignore_ascii_case("as") => (image, Some(name)),
                    _ => return Err(refused(i, "FROM [--platform=P] IMAGE [AS NAME]")),
                };
                let image = expand(image, &args).map_err(|why| refused(i, &why))?;
                let stage = names_stage(&image, &stages);
                if let Some(name) = rest {
                    stages.push(name.to_string());
                }
                if stage || image.eq_ignore_ascii_case("scratch") {
                    out.push_str(line);
                    continue;
                }
                let mut rewritten = vec!["FROM".to_string()];
                rewritten.extend(words[..flags].iter().map(|w| w.to_string()));
                rewritten.push(pin(&image)?);
                if let Some(name) = rest {
                    rewritten.extend(["AS".to_string(), name.to_string()]);
                }
                out.push_str(&rewritten.join(" "));
                out.push('\n');
            }
            "COPY" | "ADD" => {
                let from = trimmed
                    .split_whitespace()
                    .skip(1)
                    .take_while(|w| w.starts_with("--"))
                    .find_map(|w| w.strip_prefix("--from="));
                match from {
                    Some(image) if !names_stage(image, &stages) && !image.contains('$') => {
                        let pinned = pin(image)?;
                        out.push_str(&line.replacen(
                            &format!("--from={image}"),
                            &format!("--from={pinned}"),
                            1,
                        ));
                    }
                    _ => out.push_str(line),
                }
            }
            _ => out.push_str(line),
        }
    }
    if !own {
        reaches_nothing_else(&out)?;
    }
    Ok(out)
}

/// Whether `from` names one of the earlier `stages`: by its name (as
/// written: the engine matches it exactly) or its number.
fn names_stage(from: &str, stages: &[String]) -> bool {
    stages.iter().any(|s| s == from) || from.parse::<usize>().is_ok_and(|n| n < stages.len())
}

/// Checks that the pinned `text` takes nothing from outside but its
/// pinned images and its context.
fn reaches_nothing_else(text: &str) -> Result<()> {
    let pinned = |from: &str| from.len() == 64 && from.bytes().all(|b| b.is_ascii_hexdigit());
    let mut earlier: Vec<String> = Vec::new();
    for (line, instruction) in super::instructions::instructions(text) {
        let mut words = instruction.split_whitespace();
        let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
        let words: Vec<&str> = words.collect();
        let flags = words.iter().take_while(|w| w.starts_with("--")).count();
        let stages = &earlier[..];
        if keyword == "FROM" {
            let image = words.get(flags).copied().unwrap_or_default();
            if !names_stage(image, stages) && !pinned(image) && image != "scratch" {
                return Err(refused(line - 1, &format!("FROM {image} was not pinned")));
            }
            if let [_, as_, name] = &words[flags..] {
                if as_.eq_ignore_ascii_case("as") {
                    earlier.push(name.to_string());
                }
            }
            continue;
        }
        let froms = words[..flags].iter().filter_map(|w| {
            w.strip_prefix("--from=").or_else(|| {
                w.strip_prefix("--mount=")?
                    .split(',')
                    .find_map(|f| f.strip_prefix("from="))
            })
        });
        for from in froms {
            if !names_stage(from, stages) && !pinned(from) {
                return Err(refused(
                    line - 1,
                    &format!("from {from:?}: take an image through a stage (FROM IMAGE AS NAME)"),
                ));
            }
        }
        if keyword == "ADD" && words[flags..].iter().any(|w| w.contains("://")) {
            return Err(refused(
                line - 1,
                "ADD of a URL would be fetched from the build host's network: fetch it in a RUN step (on the egress network)",
            ));
        }
    }
    Ok(())
}

/// The engine's transports that read this machine's files.
const LOCAL_TRANSPORTS: [&str; 8] = [
    "oci:",
    "oci-archive:",
    "docker-archive:",
    "dir:",
    "containers-storage:",
    "docker-daemon:",
    "ostree:",
    "sif:",
];

/// Whether the build may pull `image`: a file of this machine only when
/// `local` (a person's own command line), a registry only where
/// `outbound` allows every address its name has.
pub fn allowed(image: &str, local: bool, outbound: &builderd_oci::Outbound) -> Result<()> {
    if LOCAL_TRANSPORTS.iter().any(|t| image.starts_with(t)) || image.starts_with("tarball:") {
        return match local {
            true => Ok(()),
            false => Err(SourceError(format!(
                "FROM {image}: a build here takes images from registries only"
            ))
            .into()),
        };
    }
    let reference = image.strip_prefix("docker://").unwrap_or(image);
    let parsed = builderd_oci::ImageRef::parse(reference)
        .map_err(|e| SourceError(format!("FROM {image}: {e}")))?;
    let (host, port) = match parsed.registry.as_str() {
        "docker.io" => ("registry-1.docker.io".to_string(), 443),
        registry => match registry.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                (host.to_string(), port.parse().unwrap_or(443))
            }
            _ => (registry.to_string(), 443),
        },
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addresses: Vec<std::net::IpAddr> = match host.parse() {
        Ok(ip) => vec![ip],
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(|e| SourceError(format!("FROM {image}: cannot resolve {host}: {e}")))?
            .map(|a| a.ip())
            .collect(),
    };
    // buildah resolves the name again: every address must do.
    for ip in addresses {
        outbound
            .check_ip(&host, ip)
            .map_err(|e| SourceError(format!("FROM {image}: {e}")))?;
    }
    Ok(())
}

fn refused(index: usize, why: &str) -> anyhow::Error {
    SourceError(format!("the Containerfile's line {}: {why}", index + 1)).into()
}

/// `$NAME`, `${NAME}` and `${NAME:-DEFAULT}` in `word`, from `args`; any
/// other use of `$` is refused (the engine would read it otherwise).
fn expand(word: &str, args: &[(String, String)]) -> Result<String, String> {
    let value = |name: &str| {
        args.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (expr, after) = match rest.strip_prefix('{') {
            Some(braced) => match braced.split_once('}') {
                Some((expr, after)) => (expr, after),
                None => return Err(format!("an unclosed ${{ in {word:?}")),
            },
            None => {
                let end = rest.find(|c| !name_char(c)).unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        if name.is_empty()
            || !name.chars().all(name_char)
            || default.is_some_and(|d| d.contains('$'))
        {
            return Err(format!(
                "{word:?}: only $NAME, ${{NAME}} and ${{NAME:-DEFAULT}} are expanded in FROM"
            ));
        }
        match (value(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "{word:?} names ${name}, which no ARG before the first FROM or --build-arg sets"
                ))
            }
        }
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test's image ids: 64 hex digits, as the engine's.
    fn id(image: &str) -> String {
        use sha2::{Digest, Sha256};
        format!("{:x}", Sha256::digest(image.as_bytes()))
    }

    fn pinned(text: &str, args: &[(&str, &str)]) -> Result<(String, Vec<String>)> {
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut asked = Vec::new();
        let text = pin(text, &args, false, &mut |image| {
            asked.push(image.to_string());
            Ok(id(image))
        })?;
        Ok((text, asked))
    }

    #[test]
    fn images_are_pinned_and_stages_left_alone() {
        let text = "# syntax=x\nARG BASE=node\nARG V\nFROM --platform=linux/amd64 ${BASE}:${V:-18} AS build\n\
                    RUN echo \\\n  FROM nothing\nfrom build\nFROM scratch\nFROM $BASE:$V as run\nCMD x\n";
        let (text, asked) = pinned(text, &[("V", "20")]).unwrap();
        assert_eq!(asked, ["node:20", "node:20"]);
        let node = id("node:20");
        assert_eq!(
            text,
            format!(
                "# syntax=x\nARG BASE=node\nARG V\nFROM --platform=linux/amd64 {node} AS build\n\
                 RUN echo \\\n  FROM nothing\nfrom build\nFROM scratch\nFROM {node} AS run\nCMD x\n"
            )
        );
        let (_, asked) = pinned("ARG V=16\nFROM node:${V:-18}\n", &[]).unwrap();
        assert_eq!(asked, ["node:16"]);
        let (text, asked) = pinned(
            "FROM a AS one\nCOPY --from=one /x /x\nCOPY --from=0 /x /x\n\
             COPY --chown=1 --from=nginx:1 /etc/n /n\n\
             RUN --mount=type=bind,from=one,target=/o true\n",
            &[],
        )
        .unwrap();
        assert_eq!(asked, ["a", "nginx:1"]);
        let nginx = id("nginx:1");
        assert!(
            text.contains(&format!("COPY --chown=1 --from={nginx} /etc/n /n\n")),
            "{text}"
        );
        assert!(text.contains("COPY --from=one /x /x\n"), "{text}");
    }

    #[test]
    fn local_files_and_private_registries_are_the_operators_to_allow() {
        let any = builderd_oci::Outbound::any();
        let public = builderd_oci::Outbound::public_only("--allow-private-registries");
        for local in [
            "oci:/etc",
            "docker-archive:/x.tar",
            "dir:/var",
            "containers-storage:x",
        ] {
            assert!(allowed(local, true, &public).is_ok(), "{local}");
            let err = allowed(local, false, &any).unwrap_err().to_string();
            assert!(err.contains("registries only"), "{local}: {err}");
        }
        for private in [
            "127.0.0.1:5000/base:v1",
            "docker://10.1.2.3/x",
            "[::1]:5000/y",
        ] {
            assert!(allowed(private, false, &any).is_ok(), "{private}");
            let err = allowed(private, false, &public).unwrap_err().to_string();
            assert!(
                err.contains("--allow-private-registries"),
                "{private}: {err}"
            );
        }
        assert!(allowed("Not A Reference", false, &any).is_err());
    }

    #[test]
    fn what_cannot_be_pinned_is_refused() {
        for (text, why) in [
            ("FROM $NOPE\n", "no ARG"),
            ("FROM ${A:+x}\n", "only $NAME"),
            ("FROM ${A\n", "unclosed"),
            ("FROM a b\n", "FROM [--platform=P] IMAGE"),
            ("FROM \\\n a\n", "one line"),
            ("FROM x\nARG LATE=y\nFROM $LATE\n", "no ARG"),
            (
                "FROM x\nRUN --mount=type=bind,from=alpine,target=/a true\n",
                "through a stage",
            ),
            ("FROM x\nCOPY \\\n --from=alpine /a /a\n", "through a stage"),
            (
                "FROM x\nARG I=alpine\nCOPY --from=$I /a /a\n",
                "through a stage",
            ),
            (
                "FROM x\nADD http://169.254.169.254/latest/ /m\n",
                "ADD of a URL",
            ),
        ] {
            let err = pinned(text, &[]).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
