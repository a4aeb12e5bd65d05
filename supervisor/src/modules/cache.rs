//! The module cache in Redis, as the supervisor writes it: one hash per module
//! (`warden:module:<path>` = `{content, hash}`), the index set of every path, and the
//! generation stamp (crate::intake::Keys names them; workers read them).
//!
//! Every write is planned from one read pipeline (hashes already there, index, the
//! generation) and applied by one Lua script that first checks the generation is still
//! the one read, so the write is atomic and conditional: if Redis was wiped (or another
//! supervisor wrote) in between, nothing is written and the caller plans again. Without
//! the check, a write landing just after a FLUSHALL would leave a generation and an
//! index naming only the modules just written, and workers would take that for the whole
//! workspace.
//!
//! An incremental update tells a cached module is out of date by its hash alone, which
//! is enough while every writer is a supervisor (it writes content and hash together).
//! [`ModuleCache::repair`] compares the content too, for `warden module push`: a copy
//! someone else altered in Redis (keeping the hash or not) is rewritten, and reported.
//!
//! The generation changes on every write that changes something: `INCR` normally, and a
//! fresh value (the current time in microseconds) when the key was missing, so that a
//! refilled cache never reuses a number a template may still hold for older content.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::store::StoredModule;
use super::ModuleError;
use crate::intake::{Keys, RedisCalls};

/// How long one Redis call may take (a full sync moves the whole workspace).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Re-plans after a conflicting write before giving up (each conflict means someone
/// else changed the cache in between, which converges quickly).
const MAX_ATTEMPTS: usize = 5;

/// The conditional write (see the module comment).
///
/// KEYS: generation, index. ARGV: expected generation ("" = must be missing), mode
/// (`incr` | `set` | `keep`), the value for `set`, the module key prefix, then the
/// number of modules to put followed by `path, content, hash` for each, then the number
/// of paths to remove followed by the paths. Returns the generation after the write, or
/// nil when the generation was not the expected one (nothing written).
const WRITE_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if cur then return false end
elseif cur ~= ARGV[1] then
  return false
end
local prefix = ARGV[4]
local i = 5
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', prefix .. ARGV[i], 'content', ARGV[i + 1], 'hash', ARGV[i + 2])
  redis.call('SADD', KEYS[2], ARGV[i])
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('DEL', prefix .. ARGV[i])
  redis.call('SREM', KEYS[2], ARGV[i])
  i = i + 1
end
if ARGV[2] == 'incr' then
  return redis.call('INCR', KEYS[1])
elseif ARGV[2] == 'set' then
  redis.call('SET', KEYS[1], ARGV[3])
  return tonumber(ARGV[3])
end
return tonumber(cur)
"#;

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// The generation afterwards.
    pub generation: u64,
    /// Modules written (new or changed content, or content that had been evicted).
    pub written: usize,
    /// Paths removed from the cache.
    pub removed: usize,
}

/// What [`ModuleCache::apply`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Synced(Synced),
    /// The generation key is missing: the cache was wiped; only a full sync
    /// ([`ModuleCache::fill`]) may write now.
    Wiped,
}

/// What [`ModuleCache::repair`] did, when the cache was not wiped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub synced: Synced,
    /// The paths whose cached copy was rewritten (missing, or different from the
    /// database's in content or hash), in the order given.
    pub rewritten: Vec<String>,
}

/// How [`ModuleCache::apply`] and [`ModuleCache::repair`] tell a cached module is out of
/// date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Its hash differs (one small field read per module).
    Hash,
    /// Its content or its hash differs (the whole module read per path).
    Content,
}

/// The supervisor's handle on the module cache. Cheap to clone (clones share the
/// connection and the counters).
#[derive(Clone)]
pub struct ModuleCache {
    conn: ConnectionManager,
    keys: Keys,
    script: Arc<redis::Script>,
    calls: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    round_trips: AtomicU64,
    commands: AtomicU64,
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCache")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl ModuleCache {
    /// One Redis connection (reconnecting on its own after a Redis restart).
    pub async fn connect(redis_url: &str, keys: Keys) -> Result<ModuleCache, ModuleError> {
        let url = crate::intake::redact_url(redis_url);
        let unreachable = |source| ModuleError::Redis {
            during: format!("connecting to {url}"),
            source,
        };
        let client = redis::Client::open(redis_url).map_err(unreachable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(unreachable(source)),
            Err(_) => {
                return Err(ModuleError::Timeout(format!(
                    "connecting to Redis at {url}"
                )))
            }
        };
        Ok(ModuleCache {
            conn,
            keys,
            script: Arc::new(redis::Script::new(WRITE_SCRIPT)),
            calls: Arc::default(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Round trips and commands this cache (and its clones) sent so far.
    pub fn calls(&self) -> RedisCalls {
        RedisCalls {
            round_trips: self.calls.round_trips.load(Ordering::Relaxed),
            commands: self.calls.commands.load(Ordering::Relaxed),
        }
    }

    fn count(&self, commands: usize) {
        self.calls.round_trips.fetch_add(1, Ordering::Relaxed);
        self.calls
            .commands
            .fetch_add(commands as u64, Ordering::Relaxed);
    }

    fn redis_err(during: &str) -> impl FnOnce(redis::RedisError) -> ModuleError + '_ {
        move |source| ModuleError::Redis {
            during: during.to_string(),
            source,
        }
    }

    /// The generation: one `GET`. `None`: the cache was wiped.
    pub async fn generation(&self) -> Result<Option<u64>, ModuleError> {
        self.count(1);
        redis::cmd("GET")
            .arg(self.keys.module_generation())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Self::redis_err("reading the module cache generation"))
    }

    /// Is `path`'s content cached (and the cache not wiped)? One round trip.
    pub async fn has_content(&self, path: &str) -> Result<bool, ModuleError> {
        self.count(2);
        let (generation, exists): (Option<u64>, bool) = redis::pipe()
            .cmd("GET")
            .arg(self.keys.module_generation())
            .cmd("HEXISTS")
            .arg(self.keys.module(path))
            .arg("content")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Self::redis_err("checking a cached module"))?;
        Ok(generation.is_some() && exists)
    }

    /// `path`'s cached content and hash (one `HMGET`); `None` when either is missing.
    pub async fn read(&self, path: &str) -> Result<Option<(String, String)>, ModuleError> {
        self.count(1);
        let (content, hash): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.module(path))
            .arg("content")
            .arg("hash")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Self::redis_err("reading a cached module"))?;
        Ok(content.zip(hash))
    }

    /// Makes the cache hold exactly `modules` (a full sync): writes what is missing or
    /// different, removes what is not in `modules`, and sets a fresh generation if the
    /// key was missing. Two round trips when something changed, one otherwise.
    pub async fn fill(&self, modules: &[StoredModule]) -> Result<Synced, ModuleError> {
        for _ in 0..MAX_ATTEMPTS {
            let mut pipe = redis::pipe();
            pipe.cmd("GET")
                .arg(self.keys.module_generation())
                .cmd("SMEMBERS")
                .arg(self.keys.module_index());
            for m in modules {
                pipe.cmd("HGET").arg(self.keys.module(&m.path)).arg("hash");
            }
            self.count(2 + modules.len());
            let values: Vec<redis::Value> = pipe
                .query_async(&mut self.conn.clone())
                .await
                .map_err(Self::redis_err("reading the module cache"))?;
            let Seen {
                generation,
                index,
                hashes,
            } = Seen::from_reply(values)?;
            let wanted: HashSet<&str> = modules.iter().map(|m| m.path.as_str()).collect();
            let put: Vec<&StoredModule> = modules
                .iter()
                .zip(&hashes)
                .filter(|(m, h)| h.as_deref() != Some(m.content_hash.as_str()))
                .map(|(m, _)| m)
                .collect();
            let remove: Vec<&str> = index
                .iter()
                .map(String::as_str)
                .filter(|p| !wanted.contains(p))
                .collect();
            let mode = match generation {
                None => Mode::Set(fresh_generation()),
                Some(_) if put.is_empty() && remove.is_empty() => {
                    return Ok(Synced {
                        generation: generation.unwrap_or_default(),
                        written: 0,
                        removed: 0,
                    })
                }
                Some(_) => Mode::Incr,
            };
            if let Some(g) = self.write(generation, mode, &put, &remove).await? {
                return Ok(Synced {
                    generation: g,
                    written: put.len(),
                    removed: remove.len(),
                });
            }
        }
        Err(ModuleError::Contended)
    }

    /// Brings `paths` in line with the database, where `present` are those of them that
    /// exist there (the others were removed), telling a stale module by its hash. Does
    /// nothing when the cache already agrees. Two round trips when something changed,
    /// one otherwise.
    pub async fn apply(
        &self,
        paths: &[String],
        present: &[StoredModule],
    ) -> Result<Applied, ModuleError> {
        Ok(
            match self.apply_compared(paths, present, Compare::Hash).await? {
                Some(r) => Applied::Synced(r.synced),
                None => Applied::Wiped,
            },
        )
    }

    /// Like [`ModuleCache::apply`], but a cached module whose content differs from the
    /// database's is rewritten too, even under the right hash: the cache is writable by
    /// anyone who can reach Redis, and a push is when a person expects the code they
    /// pushed to be the code that runs. Reads every module's content, so it is for the
    /// few paths a push names, never per batch. `None`: the cache was wiped (as
    /// [`Applied::Wiped`]).
    pub async fn repair(
        &self,
        paths: &[String],
        present: &[StoredModule],
    ) -> Result<Option<Repaired>, ModuleError> {
        self.apply_compared(paths, present, Compare::Content).await
    }

    async fn apply_compared(
        &self,
        paths: &[String],
        present: &[StoredModule],
        compare: Compare,
    ) -> Result<Option<Repaired>, ModuleError> {
        let by_path: HashMap<&str, &StoredModule> =
            present.iter().map(|m| (m.path.as_str(), m)).collect();
        for _ in 0..MAX_ATTEMPTS {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(self.keys.module_generation());
            for p in paths {
                match compare {
                    Compare::Hash => pipe.cmd("HGET").arg(self.keys.module(p)).arg("hash"),
                    Compare::Content => pipe
                        .cmd("HMGET")
                        .arg(self.keys.module(p))
                        .arg("hash")
                        .arg("content"),
                };
                pipe.cmd("SISMEMBER").arg(self.keys.module_index()).arg(p);
            }
            self.count(1 + 2 * paths.len());
            let values: Vec<redis::Value> = pipe
                .query_async(&mut self.conn.clone())
                .await
                .map_err(Self::redis_err("reading cached modules"))?;
            let mut values = values.into_iter();
            let generation: Option<u64> = from_value(values.next())?;
            let Some(generation) = generation else {
                return Ok(None);
            };
            let mut put = Vec::new();
            let mut remove = Vec::new();
            for p in paths {
                // Bytes, not text: whatever another writer left must still compare
                // (as different), not fail to decode.
                let (hash, content): (Option<Vec<u8>>, Option<Vec<u8>>) = match compare {
                    Compare::Hash => (from_value(values.next())?, None),
                    Compare::Content => from_value(values.next())?,
                };
                let listed: bool = from_value(values.next())?;
                match by_path.get(p.as_str()) {
                    Some(m) => {
                        let stale = hash.as_deref() != Some(m.content_hash.as_bytes())
                            || (compare == Compare::Content
                                && content.as_deref() != Some(m.content.as_bytes()));
                        if stale || !listed {
                            put.push(*m)
                        }
                    }
                    None if hash.is_some() || listed => remove.push(p.as_str()),
                    None => {}
                }
            }
            if put.is_empty() && remove.is_empty() {
                return Ok(Some(Repaired {
                    synced: Synced {
                        generation,
                        written: 0,
                        removed: 0,
                    },
                    rewritten: Vec::new(),
                }));
            }
            if let Some(g) = self
                .write(Some(generation), Mode::Incr, &put, &remove)
                .await?
            {
                return Ok(Some(Repaired {
                    synced: Synced {
                        generation: g,
                        written: put.len(),
                        removed: remove.len(),
                    },
                    rewritten: put.iter().map(|m| m.path.clone()).collect(),
                }));
            }
        }
        Err(ModuleError::Contended)
    }

    /// Runs the write script. `Ok(None)`: the generation was not `expected` any more.
    async fn write(
        &self,
        expected: Option<u64>,
        mode: Mode,
        put: &[&StoredModule],
        remove: &[&str],
    ) -> Result<Option<u64>, ModuleError> {
        let mut inv = self.script.prepare_invoke();
        inv.key(self.keys.module_generation())
            .key(self.keys.module_index())
            .arg(expected.map(|g| g.to_string()).unwrap_or_default());
        match mode {
            Mode::Incr => inv.arg("incr").arg(""),
            Mode::Set(g) => inv.arg("set").arg(g.to_string()),
        };
        inv.arg(self.keys.module("")).arg(put.len());
        for m in put {
            inv.arg(&m.path).arg(&m.content).arg(&m.content_hash);
        }
        inv.arg(remove.len());
        for p in remove {
            inv.arg(*p);
        }
        self.count(1);
        inv.invoke_async(&mut self.conn.clone())
            .await
            .map_err(Self::redis_err("writing the module cache"))
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Incr,
    Set(u64),
}

/// A generation no earlier cache can have used: microseconds since the epoch.
fn fresh_generation() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
        .max(1)
}

fn from_value<T: redis::FromRedisValue>(v: Option<redis::Value>) -> Result<T, ModuleError> {
    let v = v.ok_or_else(|| ModuleError::UnexpectedReply("a pipeline reply was short".into()))?;
    redis::from_redis_value(v).map_err(|e| ModuleError::UnexpectedReply(e.to_string()))
}

/// What [`ModuleCache::fill`]'s read pipeline saw: `[generation, index, hash...]`.
struct Seen {
    generation: Option<u64>,
    index: Vec<String>,
    /// The cached hash of each module asked about, in order.
    hashes: Vec<Option<String>>,
}

impl Seen {
    fn from_reply(values: Vec<redis::Value>) -> Result<Seen, ModuleError> {
        let mut values = values.into_iter();
        let generation = from_value(values.next())?;
        let index = from_value(values.next())?;
        let hashes = values
            .map(|v| from_value(Some(v)))
            .collect::<Result<_, _>>()?;
        Ok(Seen {
            generation,
            index,
            hashes,
        })
    }
}
