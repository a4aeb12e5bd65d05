//! Reading the module cache from Redis: a whole [`Snapshot`] (template start-up, and a
//! new generation), and one module (a miss). Nothing else in the worker talks to Redis.
//!
//! Every read opens its own short-lived connection and closes it: reads are rare (once
//! per generation in a template, once per miss in a child), a template must not hold a
//! socket between executions, and a forked child must never share its template's.
//!
//! Round trips per snapshot: 1 (`GET` generation + `SMEMBERS` index, one pipeline), then
//! - first load: 1 pipeline of `HMGET content hash`, one per module;
//! - reload: 1 pipeline of `HGET hash`, then 1 pipeline of `HMGET content hash` for the
//!   modules whose hash changed only (skipped when none did), so a push of one module
//!   moves one module's text.
//!
//! Content and hash always come from the same `HMGET`, so the compiled-code cache (keyed
//! by hash) can never hold one version's code under another version's hash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{Connection, RedisError};

use super::index::{self, Entry};
use super::keys::{ModuleKeys, CONTENT_FIELD, HASH_FIELD};

/// How long connecting may take: Redis is local or near.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one pipeline may take (a snapshot of a large workspace is megabytes).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One module's text and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub hash: String,
    pub text: Arc<str>,
}

/// The module cache as one process sees it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The generation read with the index (0: never loaded).
    pub generation: u64,
    /// Every path in the index, with its content when Redis had it (`None`: the path is
    /// listed but its content key is gone, a partial eviction).
    pub files: HashMap<String, Option<Source>>,
    /// Importable names (see [`index`]).
    pub names: HashMap<String, Entry>,
}

impl Snapshot {
    pub fn new(generation: u64, files: HashMap<String, Option<Source>>) -> Snapshot {
        let names = index::build(files.keys().map(String::as_str));
        Snapshot {
            generation,
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

    /// Loads the whole cache, reusing from `current` every module whose hash is
    /// unchanged.
    pub fn load(&self, current: &Snapshot) -> Result<Loaded, SourceError> {
        let mut con = self.connect()?;
        let redis_err = |during| move |source| SourceError::Redis { during, source };
        let (generation, paths): (Option<u64>, Vec<String>) = redis::pipe()
            .cmd("GET")
            .arg(self.keys.generation())
            .cmd("SMEMBERS")
            .arg(self.keys.index())
            .query(&mut con)
            .map_err(redis_err("reading the module index"))?;
        let Some(generation) = generation else {
            return Ok(Loaded::Wiped);
        };

        let mut files: HashMap<String, Option<Source>> = HashMap::with_capacity(paths.len());
        let have_any = current.files.values().any(Option::is_some);
        let fetch: Vec<String> = if have_any && !paths.is_empty() {
            let mut pipe = redis::pipe();
            for p in &paths {
                pipe.cmd("HGET").arg(self.keys.module(p)).arg(HASH_FIELD);
            }
            let hashes: Vec<Option<String>> = pipe
                .query(&mut con)
                .map_err(redis_err("reading module hashes"))?;
            let mut fetch = Vec::new();
            for (path, hash) in paths.into_iter().zip(hashes) {
                match (hash, current.files.get(&path)) {
                    (Some(h), Some(Some(src))) if src.hash == h => {
                        files.insert(path, Some(src.clone()));
                    }
                    _ => fetch.push(path),
                }
            }
            fetch
        } else {
            paths
        };
        if !fetch.is_empty() {
            let mut pipe = redis::pipe();
            for p in &fetch {
                pipe.cmd("HMGET")
                    .arg(self.keys.module(p))
                    .arg(CONTENT_FIELD)
                    .arg(HASH_FIELD);
            }
            let rows: Vec<Vec<Option<Vec<u8>>>> = pipe
                .query(&mut con)
                .map_err(redis_err("reading module contents"))?;
            for (path, row) in fetch.into_iter().zip(rows) {
                files.insert(path, source_of(row));
            }
        }
        Ok(Loaded::Snapshot(Snapshot::new(generation, files)))
    }

    /// One module's content and hash, `None` when its key is gone.
    pub fn read(&self, path: &str) -> Result<Option<Source>, SourceError> {
        let mut con = self.connect()?;
        let row: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.keys.module(path))
            .arg(CONTENT_FIELD)
            .arg(HASH_FIELD)
            .query(&mut con)
            .map_err(|source| SourceError::Redis {
                during: "reading a module",
                source,
            })?;
        Ok(source_of(row))
    }
}

/// `[content, hash]` from an `HMGET`; `None` unless both are there.
fn source_of(row: Vec<Option<Vec<u8>>>) -> Option<Source> {
    let mut row = row.into_iter();
    let text = row.next().flatten()?;
    let hash = row.next().flatten()?;
    Some(Source {
        // The supervisor stores PostgreSQL `text`, which is UTF-8.
        text: String::from_utf8_lossy(&text).into(),
        hash: String::from_utf8_lossy(&hash).into_owned(),
    })
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_needs_both_fields() {
        let both = source_of(vec![Some(b"x = 1\n".to_vec()), Some(b"ab".to_vec())]);
        assert_eq!(
            both,
            Some(Source {
                hash: "ab".into(),
                text: "x = 1\n".into()
            })
        );
        assert_eq!(source_of(vec![None, Some(b"ab".to_vec())]), None);
        assert_eq!(source_of(vec![Some(b"x".to_vec()), None]), None);
        assert_eq!(source_of(vec![]), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("unix:///run/r.sock"), "unix:///run/r.sock");
    }

    #[test]
    fn a_snapshot_derives_its_names_from_its_paths() {
        let mut files = HashMap::new();
        files.insert("shared/__init__.py".to_string(), None);
        files.insert("shared/a.py".to_string(), None);
        let s = Snapshot::new(7, files);
        assert_eq!(s.names.len(), 2);
        assert!(s.names["shared"].is_package());
    }
}
