//! Typos in a JSON request are errors, not silent defaults. The proto3 JSON
//! mapping says a parser rejects unknown fields; the generated message types
//! drop them (serde's derive), so `{"compresion": "zstd"}` would build with
//! no compression and say nothing. Each JSON request to builder.v1 is checked
//! against the schema (the descriptor set compiled from proto/) before it is
//! decoded: an unknown field is `invalid_argument` naming its path and, when
//! one is close, the field likely meant.

use std::sync::OnceLock;

use buffa_descriptor::{DescriptorPool, FieldKind, MessageIndex, SingularKind};
use serde_json::Value;

static DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builder_descriptor.bin"));

/// The schema of builder.v1, loaded once.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR).expect("the compiled-in descriptor set is valid")
    })
}

/// Checks `request` (the JSON body of a call to `method`) for fields its
/// message does not have. Methods without a `{method}Request` message are
/// not checked.
pub fn check(method: &str, request: &Value) -> Result<(), String> {
    let pool = pool();
    let Some(idx) = pool.message_index(&format!("builder.v1.{method}Request")) else {
        return Ok(());
    };
    walk(pool, idx, request, "")
}

fn walk(pool: &DescriptorPool, msg: MessageIndex, v: &Value, path: &str) -> Result<(), String> {
    let desc = pool.message(msg);
    // Well-known types (Timestamp, Duration, Struct, …) have JSON forms of
    // their own, not objects of their fields.
    if desc.full_name().starts_with("google.protobuf.") {
        return Ok(());
    }
    let Value::Object(fields) = v else {
        return Ok(());
    };
    for (key, value) in fields {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let Some(field) = desc
            .fields()
            .iter()
            .find(|f| f.name() == key || f.json_name() == key)
        else {
            let names: Vec<&str> = desc.fields().iter().map(|f| f.name()).collect();
            return Err(match closest(key, &names) {
                Some(meant) => format!("{here}: no such field; did you mean {meant:?}?"),
                None => format!("{here}: no such field (it has: {})", names.join(", ")),
            });
        };
        match field.kind() {
            FieldKind::Singular(SingularKind::Message(m)) => walk(pool, m, value, &here)?,
            FieldKind::List(SingularKind::Message(m)) => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    walk(pool, m, item, &format!("{here}[{i}]"))?;
                }
            }
            FieldKind::Map {
                value: SingularKind::Message(m),
                ..
            } => {
                for (k, item) in value.as_object().into_iter().flatten() {
                    walk(pool, m, item, &format!("{here}[{k:?}]"))?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The field most likely meant by `key`: one it is a prefix of (`docker` for
/// `docker_strategy`), or one a couple of edits away (in either spelling).
fn closest<'a>(key: &str, names: &[&'a str]) -> Option<&'a str> {
    let snake = to_snake(key);
    if let Some(n) = names
        .iter()
        .find(|n| n.starts_with(&format!("{snake}_")) || n.ends_with(&format!("_{snake}")))
    {
        return Some(n);
    }
    names
        .iter()
        .map(|n| (strsim::levenshtein(&snake, n), *n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 4))
        .min()
        .map(|(_, n)| n)
}

/// `sizeLimitBytes` → `size_limit_bytes`.
fn to_snake(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_with_what_was_meant() {
        let ok = json!({"config": {"source": {"docker_image": {"image_uri": "alpine"}},
            "target": {"microvmRootfs": {"compression": "zstd", "sizeLimitBytes": "5",
                "runtime_config": {"env": {"A": "1"}}}},
            "webhook": {"url": "https://x", "headers": {"X-A": "b"}}}});
        assert_eq!(check("CreateBuild", &ok), Ok(()));
        let typo = json!({"config": {"target": {"microvm_rootfs": {"compresion": "zstd"}}}});
        assert_eq!(
            check("CreateBuild", &typo).unwrap_err(),
            "config.target.microvm_rootfs.compresion: no such field; did you mean \"compression\"?"
        );
        let short = json!({"config": {"strategy": {"docker": {}}}});
        assert!(check("CreateBuild", &short)
            .unwrap_err()
            .contains("config.strategy.docker: no such field; did you mean \"docker_strategy\"?"));
        let far = json!({"confg": {}, "x": 1});
        let e = check("CreateBuild", &far).unwrap_err();
        assert!(e.starts_with("confg: no such field"), "{e}");
        let nothing_close = json!({"zzzzzz": 1});
        assert!(check("CreateBuild", &nothing_close)
            .unwrap_err()
            .contains("(it has: config)"));
        assert_eq!(check("NoSuchMethod", &typo), Ok(()));
    }
}
