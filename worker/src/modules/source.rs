//! Reading the module cache from Redis, and checking what was read against the
//! [`Manifest`] the supervisor sent over the worker's socket. Nothing else in the worker
//! talks to Redis, and nothing read from Redis is trusted: a module is usable only when
//! the SHA-256 this process computes of its content is the manifest's hash for its path
//! (Redis's own `hash` field is never read), and only the manifest's paths are modules.
//!
//! Every read opens its own short-lived connection and closes it: reads are rare (when
//! the manifest changed, in a template; once per miss in a child), a template must not
//! hold a socket between executions, and a forked child must never share its template's.
//!
//! A load is one round trip (`GET` generation, `HGET content` of each module whose
//! verified copy this process lacks, and, when the generation moved, `HGET hash` of
//! the others), plus one to read again the copies whose `hash` field changed: the first
//! load reads the workspace, a push of one module moves one module's text, and a
//! template at the generation it loaded sends nothing at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{Connection, RedisError};
use sha2::{Digest as _, Sha256};
use warden_protocol::ModuleManifest;

use super::index::{self, Entry};
use super::keys::{ModuleKeys, CONTENT_FIELD, HASH_FIELD};

/// How long connecting may take: Redis is local or near.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one pipeline may take (a snapshot of a large workspace is megabytes).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of `bytes`, as the supervisor computes it for the manifest.
pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// The workspace as the supervisor sent it: every module path and its content hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// 0: none received yet.
    pub id: u64,
    pub hashes: HashMap<String, Digest>,
}

impl From<ModuleManifest> for Manifest {
    fn from(m: ModuleManifest) -> Manifest {
        Manifest {
            id: m.id,
            hashes: m.modules.into_iter().collect(),
        }
    }
}

/// One module's text and the hash this process computed of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub hash: Digest,
    pub text: Arc<str>,
}

/// What this process holds for one manifest path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// Content whose hash is the manifest's.
    Verified(Source),
    /// Redis has no content for it (evicted): a miss when imported.
    Missing,
    /// Redis's content does not hash to the manifest's: never compiled nor run.
    Mismatch,
}

impl Cached {
    /// Checks `content` (as read from Redis or received in a reply) against `expected`.
    pub fn check(content: Option<&[u8]>, expected: &Digest) -> Cached {
        let Some(bytes) = content else {
            return Cached::Missing;
        };
        let hash = sha256(bytes);
        if &hash != expected {
            return Cached::Mismatch;
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Cached::Verified(Source {
                hash,
                text: text.into(),
            }),
            // The database's `text` is UTF-8, so its hash cannot match bytes that are not.
            Err(_) => Cached::Mismatch,
        }
    }

    pub fn verified(&self) -> Option<&Source> {
        match self {
            Cached::Verified(src) => Some(src),
            _ => None,
        }
    }
}

/// The module cache as one process sees it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The generation of the `Execute` it was loaded for (0: never loaded).
    pub generation: u64,
    /// The id of the manifest it was checked against (0: none).
    pub manifest: u64,
    /// Every manifest path.
    pub files: HashMap<String, Cached>,
    /// Importable names (see [`index`]).
    pub names: HashMap<String, Entry>,
}

impl Snapshot {
    pub fn new(generation: u64, manifest: u64, files: HashMap<String, Cached>) -> Snapshot {
        let names = index::build(files.keys().map(String::as_str));
        Snapshot {
            generation,
            manifest,
            files,
            names,
        }
    }
}

/// What a load found.
#[derive(Debug)]
pub enum Loaded {
    Snapshot(Snapshot),
    /// No generation key: the cache was wiped (FLUSHALL, a Redis restart) and the
    /// supervisor has not refilled it yet.
    Wiped,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("Redis failed while {during}: {source}")]
    Redis {
        during: &'static str,
        #[source]
        source: RedisError,
    },
}

/// Where the cache is: a Redis URL and the key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSource {
    pub url: String,
    pub keys: ModuleKeys,
}

impl RedisSource {
    pub fn new(url: &str, prefix: &str) -> RedisSource {
        RedisSource {
            url: url.to_string(),
            keys: ModuleKeys::new(prefix),
        }
    }

    fn connect(&self) -> Result<Connection, SourceError> {
        let connect = |source| SourceError::Connect {
            url: redact(&self.url),
            source,
        };
        let client = redis::Client::open(self.url.as_str()).map_err(connect)?;
        let con = client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(connect)?;
        con.set_read_timeout(Some(IO_TIMEOUT)).map_err(connect)?;
        con.set_write_timeout(Some(IO_TIMEOUT)).map_err(connect)?;
        Ok(con)
    }

    /// The snapshot of `manifest` for `generation` (`None`: the generation read from
    /// Redis, before the contents, or `current`'s when nothing is read). `current`'s verified copies whose
    /// hash is still the manifest's are kept, the rest read and checked, in one round
    /// trip (none when nothing is to be read). When the generation moved, the cache's
    /// `hash` field of each kept copy is read in that round trip too, and a copy whose
    /// field is not the manifest's hash is read again (a second round trip) and checked:
    /// so a copy someone rewrote in Redis is noticed at the next generation (and, not
    /// matching, reported and repaired), not only by a template starting afresh.
    pub fn load(
        &self,
        manifest: &Manifest,
        current: &Snapshot,
        generation: Option<u64>,
    ) -> Result<Loaded, SourceError> {
        let recheck = generation.is_some_and(|g| g != current.generation);
        let mut files: HashMap<String, Cached> = HashMap::with_capacity(manifest.hashes.len());
        let mut keep: Vec<(&String, &Digest)> = Vec::new();
        let mut fetch: Vec<(&String, &Digest)> = Vec::new();
        for (path, expected) in &manifest.hashes {
            match current.files.get(path).and_then(Cached::verified) {
                Some(src) if &src.hash == expected => {
                    files.insert(path.clone(), Cached::Verified(src.clone()));
                    keep.push((path, expected));
                }
                _ => fetch.push((path, expected)),
            }
        }
        if !recheck {
            keep.clear();
        }
        if fetch.is_empty() && keep.is_empty() {
            return Ok(Loaded::Snapshot(Snapshot::new(
                generation.unwrap_or(current.generation),
                manifest.id,
                files,
            )));
        }
        let mut con = self.connect()?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.keys.generation());
        for (p, _) in &fetch {
            pipe.cmd("HGET").arg(self.keys.module(p)).arg(CONTENT_FIELD);
        }
        for (p, _) in &keep {
            pipe.cmd("HGET").arg(self.keys.module(p)).arg(HASH_FIELD);
        }
        let mut values = query(&mut con, &pipe, 1 + fetch.len() + keep.len())?.into_iter();
        let read: Option<u64> = match values.next() {
            Some(redis::Value::Nil) | None => return Ok(Loaded::Wiped),
            Some(v) => redis::from_redis_value(v).ok(),
        };
        let generation = generation.or(read).unwrap_or(current.generation);
        for ((path, expected), value) in fetch.into_iter().zip(values.by_ref()) {
            let bytes = bytes_of(value);
            files.insert(path.clone(), Cached::check(bytes.as_deref(), expected));
        }
        let again: Vec<(&String, &Digest)> = keep
            .into_iter()
            .zip(values)
            .filter(|((_, expected), field)| {
                bytes_of(field.clone()).as_deref() != Some(hex(expected).as_bytes())
            })
            .map(|(k, _)| k)
            .collect();
        if !again.is_empty() {
            let mut pipe = redis::pipe();
            for (p, _) in &again {
                pipe.cmd("HGET").arg(self.keys.module(p)).arg(CONTENT_FIELD);
            }
            let values = query(&mut con, &pipe, again.len())?;
            for ((path, expected), value) in again.into_iter().zip(values) {
                let bytes = bytes_of(value);
                files.insert(path.clone(), Cached::check(bytes.as_deref(), expected));
            }
        }
        Ok(Loaded::Snapshot(Snapshot::new(
            generation,
            manifest.id,
            files,
        )))
    }

    /// One module's content as Redis has it, `None` when its key is gone.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let mut con = self.connect()?;
        let value: redis::Value = redis::cmd("HGET")
            .arg(self.keys.module(path))
            .arg(CONTENT_FIELD)
            .query(&mut con)
            .map_err(|source| SourceError::Redis {
                during: "reading a module",
                source,
            })?;
        Ok(bytes_of(value))
    }
}

/// Runs `pipe`, expecting `n` replies.
fn query(
    con: &mut Connection,
    pipe: &redis::Pipeline,
    n: usize,
) -> Result<Vec<redis::Value>, SourceError> {
    let during = "reading module contents";
    let values: Vec<redis::Value> = pipe
        .query(con)
        .map_err(|source| SourceError::Redis { during, source })?;
    if values.len() != n {
        return Err(SourceError::Redis {
            during,
            source: RedisError::from((redis::ErrorKind::Parse, "short pipeline reply")),
        });
    }
    Ok(values)
}

/// Lower-case hex, as the supervisor writes the `hash` field.
pub fn hex(digest: &Digest) -> String {
    hex::encode(digest)
}

/// The bytes of a bulk string reply (`None` for nil or anything else).
fn bytes_of(value: redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// `url` without its password, for messages (warden_protocol::url).
pub use warden_protocol::redact_url as redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_that_hashes_to_the_manifest_is_verified() {
        let good = b"x = 1\n";
        let expected = sha256(good);
        assert_eq!(
            Cached::check(Some(good), &expected),
            Cached::Verified(Source {
                hash: expected,
                text: "x = 1\n".into()
            })
        );
        assert_eq!(Cached::check(Some(b"x = 2\n"), &expected), Cached::Mismatch);
        assert_eq!(Cached::check(None, &expected), Cached::Missing);
        let bad_utf8 = [0xff, 0xfe];
        assert_eq!(
            Cached::check(Some(&bad_utf8), &sha256(&bad_utf8)),
            Cached::Mismatch
        );
    }

    #[test]
    fn hashes_are_sha256() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        // The form workers get (supervisor/src/modules/access.rs): the old copy here
        // left this password in clear.
        assert_eq!(
            redact("unix:///run/r.sock?user=warden-worker&pass=pw"),
            "unix:///run/r.sock?user=warden-worker&pass=***"
        );
    }

    #[test]
    fn a_snapshot_derives_its_names_from_its_paths() {
        let mut files = HashMap::new();
        files.insert("shared/__init__.py".to_string(), Cached::Missing);
        files.insert("shared/a.py".to_string(), Cached::Mismatch);
        let s = Snapshot::new(7, 1, files);
        assert_eq!(s.names.len(), 2);
        assert!(s.names["shared"].is_package());
    }
}
