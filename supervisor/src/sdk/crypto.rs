//! Secrets at rest: XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) with a 32-byte
//! key that only the supervisor (and the admin CLI) holds.
//!
//! A secret config value is stored as a *sealed envelope* in `configs.value`:
//!
//! ```json
//! {"sealed": "xchacha20poly1305", "nonce": "<base64, 24 bytes>", "ciphertext": "<base64>"}
//! ```
//!
//! - **Random 192-bit nonce per seal.** XChaCha's nonce is long enough to draw at random
//!   without a counter (no state to keep across processes or hosts).
//! - **Bound to where it is stored.** The associated data is the scope and the key name
//!   (`warden-secret:v1:org:<id>:<key>` or `…:global:<key>`), so a ciphertext copied to
//!   another key or organization by someone with write access to the table does not
//!   decrypt there.
//! - **The key** comes from `--secret-key-file PATH` or the environment variable
//!   `WARDEN_SECRET_KEY` of the supervisor, as 64 hex digits or base64 of 32 bytes. It is
//!   never passed to workers: their environment is cleared to an allow-list, and their
//!   command line carries no configuration of the supervisor's.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::sdk::SdkError;

/// The environment variable the key may come from.
pub const KEY_ENV: &str = "WARDEN_SECRET_KEY";
/// `sealed` field of an envelope: the algorithm, so another one can be added later.
pub const ALGORITHM: &str = "xchacha20poly1305";
/// Shortest plaintext accepted as a secret. Secrets are redacted by substring from
/// everything an execution outputs; a one- or two-character "secret" would garble
/// ordinary text without protecting anything.
pub const MIN_SECRET_CHARS: usize = 4;
/// Longest plaintext accepted as a secret.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Where a config value lives: the scope part of a secret's associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Org(i64),
}

impl Scope {
    pub fn from_org(org_id: Option<i64>) -> Scope {
        org_id.map_or(Scope::Global, Scope::Org)
    }

    pub fn org_id(self) -> Option<i64> {
        match self {
            Scope::Global => None,
            Scope::Org(id) => Some(id),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Org(id) => write!(f, "org:{id}"),
        }
    }
}

/// A sealed secret as stored (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub sealed: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl Envelope {
    /// Whether `value` has the shape of an envelope (says nothing about the key).
    pub fn is_envelope(value: &serde_json::Value) -> bool {
        serde_json::from_value::<Envelope>(value.clone()).is_ok_and(|e| e.sealed == ALGORITHM)
    }
}

/// The supervisor's secret key. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// A key from its text form: 64 hex digits, or base64 of 32 bytes (surrounding
    /// whitespace ignored, so a file with a trailing newline works).
    pub fn parse(text: &str, origin: &str) -> Result<SecretKey, SdkError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| BASE64.decode(text).ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| SdkError::BadKey {
                origin: origin.to_string(),
                reason: "it must be 32 bytes written as 64 hex digits or as base64 \
                         (e.g. the output of `openssl rand -hex 32`)"
                    .into(),
            })?;
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| SdkError::BadKey {
            origin: origin.to_string(),
            reason: "it is not 32 bytes long".into(),
        })?;
        Ok(SecretKey { cipher })
    }

    /// The key in `path`.
    pub fn from_file(path: &Path) -> Result<SecretKey, SdkError> {
        let text = std::fs::read_to_string(path).map_err(|source| SdkError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        SecretKey::parse(&text, &format!("the key file {}", path.display()))
    }

    /// A fresh random key, as 64 hex digits (for `warden config keygen` and tests).
    pub fn generate_hex() -> Result<String, SdkError> {
        let bytes = <[u8; 32]>::try_generate().map_err(|e| SdkError::Crypto {
            what: "generate a key",
            reason: e.to_string(),
        })?;
        Ok(hex::encode(bytes))
    }

    /// Seals `plaintext` for `key` in `scope`.
    pub fn seal(&self, scope: Scope, key: &str, plaintext: &str) -> Result<Envelope, SdkError> {
        let nonce = XNonce::try_generate().map_err(|e| SdkError::Crypto {
            what: "draw a nonce",
            reason: e.to_string(),
        })?;
        let aad = associated_data(scope, key);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SdkError::Crypto {
                what: "encrypt the secret",
                reason: "the plaintext is too long".into(),
            })?;
        Ok(Envelope {
            sealed: ALGORITHM.to_string(),
            nonce: BASE64.encode(nonce.as_slice()),
            ciphertext: BASE64.encode(ciphertext),
        })
    }

    /// The plaintext of `envelope`, stored for `key` in `scope`.
    pub fn open(&self, scope: Scope, key: &str, envelope: &Envelope) -> Result<String, SdkError> {
        let undecryptable = |reason: &str| SdkError::Undecryptable {
            scope,
            key: key.to_string(),
            reason: reason.to_string(),
        };
        if envelope.sealed != ALGORITHM {
            return Err(undecryptable("it was sealed with an unknown algorithm"));
        }
        let nonce = BASE64
            .decode(&envelope.nonce)
            .ok()
            .and_then(|n| XNonce::try_from(n.as_slice()).ok())
            .ok_or_else(|| undecryptable("its nonce is malformed"))?;
        let ciphertext = BASE64
            .decode(&envelope.ciphertext)
            .map_err(|_| undecryptable("its ciphertext is not base64"))?;
        let aad = associated_data(scope, key);
        let plain = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                undecryptable(
                    "the secret key is not the one it was sealed with (or the stored value \
                     was altered)",
                )
            })?;
        String::from_utf8(plain).map_err(|_| undecryptable("its plaintext is not UTF-8"))
    }
}

fn associated_data(scope: Scope, key: &str) -> String {
    format!("warden-secret:v1:{scope}:{key}")
}

/// Checks a plaintext before it is sealed.
pub fn check_plaintext(key: &str, plaintext: &str) -> Result<(), SdkError> {
    let chars = plaintext.chars().count();
    if chars < MIN_SECRET_CHARS {
        return Err(SdkError::InvalidValue {
            key: key.to_string(),
            reason: format!(
                "a secret must be at least {MIN_SECRET_CHARS} characters long, so that \
                 redacting it from output cannot garble ordinary text"
            ),
        });
    }
    if plaintext.len() > MAX_SECRET_BYTES {
        return Err(SdkError::InvalidValue {
            key: key.to_string(),
            reason: format!("a secret may be at most {MAX_SECRET_BYTES} bytes long"),
        });
    }
    if plaintext.contains('\0') {
        return Err(SdkError::InvalidValue {
            key: key.to_string(),
            reason: "a secret may not contain NUL characters".into(),
        });
    }
    Ok(())
}

/// The `--secret-key-file` flag, for every command that seals or opens secrets (the
/// environment variable is read when the flag is absent).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecretKeyArgs {
    /// File holding the key that encrypts secret config values (32 bytes as 64 hex
    /// digits or base64). Without it, the environment variable WARDEN_SECRET_KEY is
    /// used. Workers never see it.
    #[arg(long, value_name = "PATH")]
    pub secret_key_file: Option<PathBuf>,
}

impl SecretKeyArgs {
    /// The configured key, if any: the file wins over the environment.
    pub fn load(&self) -> Result<Option<SecretKey>, SdkError> {
        if let Some(path) = &self.secret_key_file {
            return SecretKey::from_file(path).map(Some);
        }
        match std::env::var(KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                SecretKey::parse(&text, &format!("the environment variable {KEY_ENV}")).map(Some)
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::parse(&"ab".repeat(32), "test").unwrap()
    }

    #[test]
    fn seal_then_open_round_trips_and_nonces_differ() {
        let k = key();
        let a = k.seal(Scope::Org(7), "token", "hunter22").unwrap();
        let b = k.seal(Scope::Org(7), "token", "hunter22").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.contains("hunter22"));
        assert_eq!(k.open(Scope::Org(7), "token", &a).unwrap(), "hunter22");
        assert!(Envelope::is_envelope(&serde_json::to_value(&a).unwrap()));
    }

    #[test]
    fn an_envelope_does_not_open_under_another_key_scope_or_secret_key() {
        let k = key();
        let e = k.seal(Scope::Org(7), "token", "hunter22").unwrap();
        assert!(k.open(Scope::Org(8), "token", &e).is_err());
        assert!(k.open(Scope::Global, "token", &e).is_err());
        assert!(k.open(Scope::Org(7), "other", &e).is_err());
        let wrong = SecretKey::parse(&"cd".repeat(32), "test").unwrap();
        let err = wrong.open(Scope::Org(7), "token", &e).unwrap_err();
        assert!(
            err.to_string().contains("not the one it was sealed with"),
            "{err}"
        );
    }

    #[test]
    fn keys_parse_from_hex_or_base64_and_bad_ones_say_why() {
        assert!(SecretKey::parse(&format!("{}\n", "0f".repeat(32)), "t").is_ok());
        assert!(SecretKey::parse(&BASE64.encode([7u8; 32]), "t").is_ok());
        let err = SecretKey::parse("too short", "the key file k").unwrap_err();
        assert!(err.to_string().contains("the key file k"), "{err}");
        assert!(SecretKey::parse(&"0f".repeat(16), "t").is_err());
        assert_eq!(SecretKey::generate_hex().unwrap().len(), 64);
        assert_eq!(format!("{:?}", key()), "SecretKey(***)");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(check_plaintext("k", "abc").is_err());
        assert!(check_plaintext("k", "abcd").is_ok());
    }
}
