//! A Containerfile read as the engine's parser reads it: the escape
//! character of its directive, and its instructions with continuation
//! lines joined and comments dropped.

/// The escape character: `\`, or what a leading `# escape=` directive says.
pub fn escape_char(text: &str) -> char {
    for line in text.lines() {
        let Some(directive) = line.trim().strip_prefix('#') else {
            break;
        };
        let Some((name, value)) = directive.split_once('=') else {
            break;
        };
        if name.trim().eq_ignore_ascii_case("escape") {
            return value.trim().chars().next().unwrap_or('\\');
        }
    }
    '\\'
}

/// The instructions of a Containerfile, continuation lines joined and
/// comments dropped, each with the line it starts on.
pub fn instructions(text: &str) -> Vec<(usize, String)> {
    let escape = escape_char(text);
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        // A comment (or a blank line) inside a continued instruction is
        // dropped, as the engine's parser does.
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_some()) {
            continue;
        }
        let (body, continued) = match trimmed.strip_suffix(escape) {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        entry.1.push_str(body);
        entry.1.push(' ');
        if !continued {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}
