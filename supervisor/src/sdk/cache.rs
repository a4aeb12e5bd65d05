//! The config cache: each scope's config (global, or one organization's) as one Redis
//! value, filled from PostgreSQL on a miss, so that preparing a batch costs one Redis
//! round trip for the configs of every organization in it and no database query while
//! the cache is warm (DESIGN.md, "Prepare").
//!
//! ```text
//!  load(scopes) ── one pipeline: HMGET generations <scopes>, MGET config:<scopes> ──▶ hits
//!        │ misses (absent, or filled at an older generation)
//!        ▼
//!  one query for every missed scope ──▶ SET config:<scope> {gen, values, secrets} EX ttl
//! ```
//!
//! **Invalidation without a race.** A writer (`warden config set`, or a committed SDK
//! `config.set`) bumps the scope's generation *after* its change is committed. A filler
//! reads the generation *before* it reads the database and stores it with the values. A
//! fill that read the database before a change can therefore only be stored under the
//! old generation, which every later reader sees as a miss. The TTL bounds how long a
//! value changed behind Warden's back (plain SQL) can be served.
//!
//! Secrets are cached sealed, exactly as stored: the key never leaves the supervisor's
//! memory, and Redis holds no plaintext.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use crate::intake::Keys;
use crate::sdk::crypto::{Envelope, Scope};
use crate::sdk::SdkError;
use crate::store::{ConfigKind, Store};

/// The reply to the lookup pipeline: each scope's generation, and its cached document.
type Lookup = (Vec<Option<i64>>, Vec<Option<String>>);

/// How long a filled scope lives in Redis without being invalidated.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// One scope's config as cached in Redis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cached {
    /// The generation the fill read before querying the database.
    gen: i64,
    values: BTreeMap<String, serde_json::Value>,
    secrets: BTreeMap<String, Envelope>,
}

/// One scope's config, ready for dispatch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeConfig {
    /// Non-secret values by key.
    pub values: BTreeMap<String, serde_json::Value>,
    /// Sealed secrets by key.
    pub secrets: BTreeMap<String, Envelope>,
    /// What an execution is sent for this scope, serialised once per batch:
    /// `{"values": {...}, "secrets": [<keys>]}` (secret names, never values).
    pub public_json: String,
}

impl ScopeConfig {
    pub fn new(
        values: BTreeMap<String, serde_json::Value>,
        secrets: BTreeMap<String, Envelope>,
    ) -> Self {
        let names: Vec<&String> = secrets.keys().collect();
        let public_json = serde_json::json!({ "values": values, "secrets": names }).to_string();
        ScopeConfig {
            values,
            secrets,
            public_json,
        }
    }
}

/// The configs of one batch's scopes.
#[derive(Debug, Clone, Default)]
pub struct ConfigSnapshot {
    scopes: HashMap<Scope, Arc<ScopeConfig>>,
}

impl ConfigSnapshot {
    /// The scope's config (empty when it has none).
    pub fn get(&self, scope: Scope) -> Arc<ScopeConfig> {
        self.scopes
            .get(&scope)
            .cloned()
            .unwrap_or_else(|| Arc::new(ScopeConfig::new(BTreeMap::new(), BTreeMap::new())))
    }

    /// A snapshot from explicit scopes (tests, tools).
    pub fn from_scopes(scopes: impl IntoIterator<Item = (Scope, ScopeConfig)>) -> Self {
        ConfigSnapshot {
            scopes: scopes.into_iter().map(|(s, c)| (s, Arc::new(c))).collect(),
        }
    }
}

/// What the cache did so far (for tests and the status line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Redis round trips of `load` (one per call, plus one per fill).
    pub redis_round_trips: u64,
    /// Database queries made to fill misses (one per `load` with a miss).
    pub db_fills: u64,
    /// Scopes served from Redis.
    pub hits: u64,
    /// Scopes read from the database.
    pub misses: u64,
}

#[derive(Default)]
struct Counters {
    redis_round_trips: AtomicU64,
    db_fills: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The supervisor's config cache. Cheap to clone (shared connection and counters).
#[derive(Clone)]
pub struct ConfigCache {
    store: Store,
    redis: ConnectionManager,
    keys: Keys,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ConfigCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigCache")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl ConfigCache {
    /// Opens the cache's own Redis connection (one, for the supervisor's lifetime).
    pub async fn connect(
        client: &redis::Client,
        keys: Keys,
        store: Store,
    ) -> Result<ConfigCache, SdkError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        let redis = tokio::time::timeout(
            Duration::from_secs(10),
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| SdkError::Redis {
            what: "connect the config cache",
            reason: "timed out after 10 s".into(),
        })?
        .map_err(|e| SdkError::redis("connect the config cache", e))?;
        Ok(ConfigCache {
            store,
            redis,
            keys,
            counters: Arc::default(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            redis_round_trips: c.redis_round_trips.load(Ordering::Relaxed),
            db_fills: c.db_fills.load(Ordering::Relaxed),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
        }
    }

    /// The configs of `scopes`: one Redis round trip, plus one query and one Redis
    /// write for the scopes that missed. When Redis is unreachable the database alone
    /// answers (nothing is cached); only a database error fails the call.
    pub async fn load(&self, scopes: &[Scope]) -> Result<ConfigSnapshot, SdkError> {
        let mut scopes: Vec<Scope> = scopes.to_vec();
        scopes.sort_unstable();
        scopes.dedup();
        let mut out = ConfigSnapshot::default();
        if scopes.is_empty() {
            return Ok(out);
        }
        let names: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let doc_keys: Vec<String> = names.iter().map(|n| self.keys.config_cache(n)).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.keys.config_generations())
            .arg(&names)
            .cmd("MGET")
            .arg(&doc_keys);
        self.counters
            .redis_round_trips
            .fetch_add(1, Ordering::Relaxed);
        let cached: Option<Lookup> = match pipe.query_async(&mut self.redis.clone()).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "config cache unreachable; reading configs from the database");
                None
            }
        };

        let mut missed: Vec<(Scope, i64)> = Vec::new();
        match &cached {
            Some((gens, docs)) => {
                for (i, &scope) in scopes.iter().enumerate() {
                    let gen = gens.get(i).copied().flatten().unwrap_or(0);
                    let hit = docs
                        .get(i)
                        .and_then(|d| d.as_deref())
                        .and_then(|d| serde_json::from_str::<Cached>(d).ok())
                        .filter(|c| c.gen == gen);
                    match hit {
                        Some(c) => {
                            out.scopes
                                .insert(scope, Arc::new(ScopeConfig::new(c.values, c.secrets)));
                        }
                        None => missed.push((scope, gen)),
                    }
                }
            }
            None => missed = scopes.iter().map(|&s| (s, 0)).collect(),
        }
        self.counters
            .hits
            .fetch_add(out.scopes.len() as u64, Ordering::Relaxed);
        if missed.is_empty() {
            return Ok(out);
        }
        self.counters
            .misses
            .fetch_add(missed.len() as u64, Ordering::Relaxed);
        self.counters.db_fills.fetch_add(1, Ordering::Relaxed);

        let orgs: Vec<i64> = missed.iter().filter_map(|(s, _)| s.org_id()).collect();
        let global = missed.iter().any(|(s, _)| *s == Scope::Global);
        let rows = self.store.configs_for_scopes(&orgs, global).await?;
        let mut filled: HashMap<Scope, Cached> = missed
            .iter()
            .map(|&(s, gen)| {
                (
                    s,
                    Cached {
                        gen,
                        ..Cached::default()
                    },
                )
            })
            .collect();
        for row in rows {
            let Some(c) = filled.get_mut(&Scope::from_org(row.org_id)) else {
                continue;
            };
            if row.kind == ConfigKind::Secret {
                match serde_json::from_value::<Envelope>(row.value) {
                    Ok(e) => {
                        c.secrets.insert(row.key, e);
                    }
                    Err(_) => tracing::warn!(
                        key = %row.key,
                        "a stored secret is not a sealed envelope; it is ignored"
                    ),
                }
            } else {
                c.values.insert(row.key, row.value);
            }
        }
        if cached.is_some() {
            let mut pipe = redis::pipe();
            for (scope, c) in &filled {
                if let Ok(doc) = serde_json::to_string(c) {
                    pipe.cmd("SET")
                        .arg(self.keys.config_cache(&scope.to_string()))
                        .arg(doc)
                        .arg("EX")
                        .arg(CACHE_TTL.as_secs())
                        .ignore();
                }
            }
            self.counters
                .redis_round_trips
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = pipe.query_async::<()>(&mut self.redis.clone()).await {
                tracing::warn!(error = %e, "could not fill the config cache (the values are still used)");
            }
        }
        for (scope, c) in filled {
            out.scopes
                .insert(scope, Arc::new(ScopeConfig::new(c.values, c.secrets)));
        }
        Ok(out)
    }

    /// Bumps the generation of `scopes` (call after their change is committed).
    pub async fn invalidate(&self, scopes: &[Scope]) -> Result<(), SdkError> {
        invalidate(&mut self.redis.clone(), &self.keys, scopes).await
    }
}

/// Bumps the generation of `scopes` and drops their cached values, on any connection
/// (the CLI's too). Call after the change is committed.
pub async fn invalidate<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    scopes: &[Scope],
) -> Result<(), SdkError> {
    if scopes.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for scope in scopes {
        let name = scope.to_string();
        pipe.cmd("HINCRBY")
            .arg(keys.config_generations())
            .arg(&name)
            .arg(1)
            .ignore()
            .cmd("DEL")
            .arg(keys.config_cache(&name))
            .ignore();
    }
    pipe.query_async::<()>(conn)
        .await
        .map_err(|e| SdkError::redis("invalidate the config cache", e))
}
