//! The secrets a build needs while it waits and runs (a registry password,
//! Git credentials, build secrets), kept with the build in the database
//! sealed (ChaCha20-Poly1305) under a key of the server's own: a copy of the
//! database alone (a backup, a dump) holds none of them in plain text. The
//! key is `DATA/secrets.key` (mode 0600), made at the first start. The
//! sealed text is removed when the build ends (`Store::transition`).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "sealed:v1:";

/// What a build is given, besides its config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildSecrets {
    /// USER:PASS for the registry.
    pub registry: Option<String>,
    pub git: Option<GitSecret>,
    /// Build secrets by id.
    pub build: BTreeMap<String, String>,
}

impl BuildSecrets {
    pub fn is_empty(&self) -> bool {
        *self == BuildSecrets::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GitSecret {
    Token(String),
    Basic { username: String, password: String },
    SshKey(String),
}

/// Seals and opens build secrets with the server's key.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// The key at `path`, made (32 random bytes, mode 0600) if there is none.
    pub fn open_or_create(path: &Path) -> std::io::Result<Sealer> {
        let key = match std::fs::read(path) {
            Ok(key) => key,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(std::io::Error::other)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(&key)?;
                f.sync_all()?;
                key.to_vec()
            }
            Err(e) => return Err(e),
        };
        if key.len() != 32 {
            return Err(std::io::Error::other(format!(
                "{}: a sealing key is 32 bytes, this is {}",
                path.display(),
                key.len()
            )));
        }
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// `secrets` sealed, as the database keeps it; None when there are none.
    pub fn seal(&self, secrets: &BuildSecrets) -> Option<String> {
        if secrets.is_empty() {
            return None;
        }
        let plain = serde_json::to_vec(secrets).expect("serialisable");
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the system's random source");
        let mut sealed = nonce.to_vec();
        sealed.extend(
            self.cipher
                .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
                .expect("ChaCha20-Poly1305 seals any length"),
        );
        Some(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(sealed)
        ))
    }

    /// What `text` holds: sealed by this server, or (from a server before
    /// sealing) a registry's USER:PASS as it was kept.
    pub fn open(&self, text: &str) -> Result<BuildSecrets, String> {
        let Some(b64) = text.strip_prefix(PREFIX) else {
            return Ok(BuildSecrets {
                registry: Some(text.to_string()),
                ..BuildSecrets::default()
            });
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("the build's sealed secrets: {e}"))?;
        if bytes.len() < 12 {
            return Err("the build's sealed secrets are cut short".into());
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| {
                "the build's secrets were sealed with another key (was secrets.key replaced?)"
                    .to_string()
            })?;
        serde_json::from_slice(&plain).map_err(|e| format!("the build's sealed secrets: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_sealed_under_the_servers_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secrets.key");
        let sealer = Sealer::open_or_create(&key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let secrets = BuildSecrets {
            registry: Some("u:registry-pass".into()),
            git: Some(GitSecret::Token("ghp_tokenvalue".into())),
            build: [("npm".to_string(), "npm-secret".to_string())].into(),
        };
        let sealed = sealer.seal(&secrets).unwrap();
        for plain in ["registry-pass", "ghp_tokenvalue", "npm-secret"] {
            assert!(!sealed.contains(plain));
        }
        // The same key opens it, read again from the file.
        let again = Sealer::open_or_create(&key).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), secrets);
        // Another key does not, nor does a changed byte.
        let other = Sealer::open_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open(&sealed).unwrap_err().contains("another key"));
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(sealer.open(&String::from_utf8(tampered).unwrap()).is_err());
        // What an older server kept: a registry login.
        assert_eq!(
            sealer.open("bob:pw").unwrap().registry.as_deref(),
            Some("bob:pw")
        );
        assert_eq!(sealer.seal(&BuildSecrets::default()), None);
    }
}
