//! [`ModuleSync`]: keeps the Redis module cache in step with `workspace_modules`, and is
//! what `warden serve` calls at each step.
//!
//! ```text
//! start-up      LISTEN warden_modules, then full sync (all modules, 1 query + ≤2 Redis round trips)
//! NOTIFY path   ──▶ follow(): collect paths for a few ms ──▶ 1 query for them ──▶ apply (≤2 round trips)
//! per batch     check(): GET generation (1 command) ─ missing ─▶ full sync, then dispatch
//! module_miss   answer(): cached already? (1 round trip) ─ no ─▶ 1 query for that path ──▶ apply
//! LISTEN lost   reconnect (back-off) ──▶ full sync (notifications were missed meanwhile)
//! module push   repair_paths(): 1 query for the pushed paths ──▶ compare content too ──▶ apply
//! mismatch      answer(): a worker found a cached copy that does not match the manifest
//!               ──▶ repair_paths() for that path
//! ```
//!
//! The manifest ([`ModuleSync::manifest`]): every module path with the SHA-256 of its
//! content, computed here from what the database returned (never from Redis), updated
//! with every write this keeper makes. Workers import only content that hashes to it.
//! When the per-batch check finds a generation this keeper did not see yet (another
//! supervisor or `warden module push` wrote, or someone bumped it), the database's
//! hash column (one small query) says which paths changed, and those are synced first,
//! so the manifest a batch carries is never behind a push that reached Redis before it.
//!
//! Writes to Redis are serialised by one async lock (a full sync and an incremental
//! update never interleave in this process); across processes the cache's conditional
//! write keeps them consistent (crate::modules::cache). Nothing here reads every module
//! from the database per execution: only start-up, a LISTEN reconnect and a wiped cache
//! do.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch, Mutex};
use warden_protocol::{ModuleManifest, Reply, ReplyOutcome, Request};

use super::cache::{Applied, ModuleCache, Repaired, Synced};
use super::store::StoredModule;
use super::{files, store, ModuleError};
use crate::store::{Backoff, Store};

/// The channel the `workspace_modules` trigger notifies (migrations/0002).
pub const CHANNEL: &str = "warden_modules";
/// The request op a worker sends when the cache lacks a module it needs.
pub const MISS_OP: &str = "module_miss";
/// After a notification, how long more are collected into the same update: a push of a
/// directory notifies once per file, all at its commit.
const COLLECT: Duration = Duration::from_millis(5);
/// The most paths one incremental update handles.
const MAX_BATCH: usize = 1000;

/// The module cache's keeper. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ModuleSync {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    cache: ModuleCache,
    /// One writer at a time (per process).
    write: Mutex<()>,
    /// The last generation seen, for when Redis cannot be read.
    generation: AtomicU64,
    /// The generation the per-batch check last brought the manifest up to (0: never).
    checked: AtomicU64,
    /// Repairs so far, by kind (for `/metrics`).
    wipes: AtomicU64,
    misses: AtomicU64,
    mismatches: AtomicU64,
    manifest: std::sync::Mutex<Manifest>,
    /// Where notifications of `warden_packages` go (the package keeper), heard on the
    /// same LISTEN connection: the design allows one.
    packages: std::sync::Mutex<Option<mpsc::UnboundedSender<()>>>,
}

/// The workspace as the database has it, path by path (see the module comment).
#[derive(Debug)]
struct Manifest {
    /// Path → (the database's `content_hash` column, SHA-256 of the content).
    entries: HashMap<String, (String, [u8; 32])>,
    /// What workers are sent; rebuilt (with a new id) whenever `entries` changes.
    wire: Arc<ModuleManifest>,
}

impl Manifest {
    fn set(&mut self, path: &str, module: Option<&StoredModule>) -> bool {
        match module {
            Some(m) => {
                let entry = (m.content_hash.clone(), sha256(&m.content));
                self.entries.insert(path.to_string(), entry.clone()) != Some(entry)
            }
            None => self.entries.remove(path).is_some(),
        }
    }

    fn publish(&mut self) {
        let mut modules: Vec<(String, [u8; 32])> = self
            .entries
            .iter()
            .map(|(p, (_, sha))| (p.clone(), *sha))
            .collect();
        modules.sort_unstable();
        self.wire = Arc::new(ModuleManifest {
            id: self.wire.id + 1,
            modules,
        });
    }
}

/// The manifest of exactly `modules` (for `bench --local`, which has no database).
pub fn manifest_of(modules: &[StoredModule]) -> ModuleManifest {
    let mut list: Vec<(String, [u8; 32])> = modules
        .iter()
        .map(|m| (m.path.clone(), sha256(&m.content)))
        .collect();
    list.sort_unstable();
    ModuleManifest {
        id: 1,
        modules: list,
    }
}

/// Module cache repairs by kind, counted since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repairs {
    /// The whole cache was gone (Redis wiped or restarted) and was refilled.
    pub wipes: u64,
    /// A worker missed a module (or the whole cache) and it was re-cached.
    pub misses: u64,
    /// A worker's copy did not match the database's hash and was rewritten.
    pub mismatches: u64,
}

/// SHA-256 of a module's content, as workers compute it.
pub fn sha256(content: &str) -> [u8; 32] {
    Sha256::digest(content.as_bytes()).into()
}

impl ModuleSync {
    pub fn new(store: Store, cache: ModuleCache) -> ModuleSync {
        ModuleSync {
            inner: Arc::new(Inner {
                store,
                cache,
                write: Mutex::new(()),
                generation: AtomicU64::new(0),
                checked: AtomicU64::new(0),
                packages: std::sync::Mutex::new(None),
                wipes: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                mismatches: AtomicU64::new(0),
                manifest: std::sync::Mutex::new(Manifest {
                    entries: HashMap::new(),
                    wire: Arc::new(ModuleManifest {
                        id: 1,
                        modules: Vec::new(),
                    }),
                }),
            }),
        }
    }

    /// The workspace's module paths and content hashes as this keeper last wrote them
    /// to the cache from the database; what a batch's executions are checked against.
    pub fn manifest(&self) -> Arc<ModuleManifest> {
        self.lock_manifest().wire.clone()
    }

    fn lock_manifest(&self) -> std::sync::MutexGuard<'_, Manifest> {
        // Every update is a few map operations and a rebuild; a panic leaves a
        // consistent (if older) manifest.
        self.inner
            .manifest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records `modules` as the whole workspace.
    fn record_all(&self, modules: &[StoredModule]) {
        let mut m = self.lock_manifest();
        let wanted: HashSet<&str> = modules.iter().map(|m| m.path.as_str()).collect();
        let before = m.entries.len();
        m.entries.retain(|p, _| wanted.contains(p.as_str()));
        let mut changed = m.entries.len() != before;
        for module in modules {
            changed |= m.set(&module.path, Some(module));
        }
        if changed {
            m.publish();
        }
    }

    /// Records `paths` as the database has them (`present`: those that exist).
    fn record(&self, paths: &[String], present: &[StoredModule]) {
        let by_path: HashMap<&str, &StoredModule> =
            present.iter().map(|m| (m.path.as_str(), m)).collect();
        let mut m = self.lock_manifest();
        let mut changed = false;
        for p in paths {
            changed |= m.set(p, by_path.get(p.as_str()).copied());
        }
        if changed {
            m.publish();
        }
    }

    /// Brings the manifest up to the database after someone else wrote the cache: one
    /// query of every path's hash column; the paths that differ are synced (which
    /// records them).
    async fn refresh(&self) -> Result<(), ModuleError> {
        let hashes = store::hashes(&self.inner.store).await?;
        let changed: Vec<String> = {
            let m = self.lock_manifest();
            let in_db: HashSet<&str> = hashes.iter().map(|(p, _)| p.as_str()).collect();
            hashes
                .iter()
                .filter(|(p, h)| m.entries.get(p).map(|e| &e.0) != Some(h))
                .map(|(p, _)| p.clone())
                .chain(
                    m.entries
                        .keys()
                        .filter(|p| !in_db.contains(p.as_str()))
                        .cloned(),
                )
                .collect()
        };
        if !changed.is_empty() {
            self.sync_paths(&changed).await?;
        }
        Ok(())
    }

    /// Notifications of a requirements change (`warden_packages`), and one after every
    /// reconnect of the listener (changes may have been missed). Call before
    /// [`ModuleSync::start`].
    pub fn package_changes(&self) -> mpsc::UnboundedReceiver<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self
            .inner
            .packages
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    pub fn cache(&self) -> &ModuleCache {
        &self.inner.cache
    }

    /// The last generation this process saw (0: none yet).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// The cache repairs this keeper made so far.
    pub fn repairs(&self) -> Repairs {
        Repairs {
            wipes: self.inner.wipes.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            mismatches: self.inner.mismatches.load(Ordering::Relaxed),
        }
    }

    fn seen(&self, generation: u64) -> u64 {
        self.inner.generation.store(generation, Ordering::Relaxed);
        generation
    }

    /// Start-up: listens for changes first (so none is missed), then fills the cache
    /// from the database, then follows changes until `stop` turns true. The listener
    /// is the one extra database connection the design allows.
    pub async fn start(
        &self,
        database_url: &str,
        stop: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, ModuleError> {
        let listener = listen(database_url).await?;
        let synced = self.full_sync().await?;
        tracing::info!(
            generation = synced.generation,
            written = synced.written,
            removed = synced.removed,
            "module cache synced"
        );
        let this = self.clone();
        let url = database_url.to_string();
        Ok(tokio::spawn(async move {
            this.follow(listener, url, stop).await
        }))
    }

    /// Reads every module from the database and makes the cache hold exactly them.
    pub async fn full_sync(&self) -> Result<Synced, ModuleError> {
        let _one = self.inner.write.lock().await;
        let modules = store::load_all(&self.inner.store).await?;
        let synced = self.inner.cache.fill(&modules).await?;
        self.record_all(&modules);
        self.seen(synced.generation);
        Ok(synced)
    }

    /// Brings `paths` in line with the database (a full sync if the cache was wiped).
    pub async fn sync_paths(&self, paths: &[String]) -> Result<Synced, ModuleError> {
        let applied = {
            let _one = self.inner.write.lock().await;
            let present = store::load(&self.inner.store, paths).await?;
            let applied = self.inner.cache.apply(paths, &present).await?;
            if let Applied::Synced(_) = applied {
                self.record(paths, &present);
            }
            applied
        };
        match applied {
            Applied::Synced(s) => {
                self.seen(s.generation);
                Ok(s)
            }
            Applied::Wiped => self.full_sync().await,
        }
    }

    /// Brings `paths` in line with the database, rewriting any cached copy whose content
    /// or hash differs from the database's ([`ModuleCache::repair`]); for `warden module
    /// push`. After a wipe, a full sync and then the same comparison.
    pub async fn repair_paths(&self, paths: &[String]) -> Result<Repaired, ModuleError> {
        // Twice at most: a wipe, then the check on the refilled cache.
        for _ in 0..2 {
            let repaired = {
                let _one = self.inner.write.lock().await;
                let present = store::load(&self.inner.store, paths).await?;
                let repaired = self.inner.cache.repair(paths, &present).await?;
                if repaired.is_some() {
                    self.record(paths, &present);
                }
                repaired
            };
            match repaired {
                Some(r) => {
                    self.seen(r.synced.generation);
                    return Ok(r);
                }
                None => {
                    self.full_sync().await?;
                }
            }
        }
        Err(ModuleError::Contended)
    }

    /// The per-batch check: one `GET`. A missing generation means the cache was wiped
    /// (FLUSHALL, a Redis restart): it is refilled before returning, so no execution of
    /// the batch needs a module the cache lost. On a Redis error the last known
    /// generation is returned (the intake is failing too, then).
    ///
    /// A generation this keeper has not checked the manifest at yet (someone else wrote
    /// the cache) costs one more query: see [`ModuleSync::refresh`]. Take
    /// [`ModuleSync::manifest`] after this.
    pub async fn check(&self) -> u64 {
        let generation = self.check_generation().await;
        if generation != self.inner.checked.load(Ordering::Relaxed) {
            match self.refresh().await {
                Ok(()) => self.inner.checked.store(generation, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot bring the module manifest up to the database")
                }
            }
        }
        generation
    }

    async fn check_generation(&self) -> u64 {
        match self.inner.cache.generation().await {
            Ok(Some(g)) => self.seen(g),
            Ok(None) => {
                self.inner.wipes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("the module cache is gone (Redis wiped or restarted): refilling it");
                match self.full_sync().await {
                    Ok(s) => s.generation,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot refill the module cache");
                        self.generation()
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the module cache generation");
                self.generation()
            }
        }
    }

    /// The answer to a `module_miss` request: `{"path": "a/b.py"}` (that module's
    /// content is gone from Redis) or `{}` (the whole cache is gone). Re-caches from the
    /// database and answers `{"generation": g}`, plus, for a path, the module itself as
    /// the cache now holds it (`"content"`, `"hash"`): a child may not open connections
    /// to this host's services (the sandbox's firewall rule), so it cannot read Redis
    /// itself. Or an error a person can read.
    pub async fn answer(&self, req: &Request) -> Reply {
        let outcome = match self.answer_json(&req.args_json).await {
            Ok(value_json) => ReplyOutcome::Ok { value_json },
            Err(message) => ReplyOutcome::Err { message },
        };
        Reply {
            execution_id: req.execution_id.clone(),
            request_id: req.request_id,
            outcome,
        }
    }

    async fn answer_json(&self, args_json: &str) -> Result<String, String> {
        if let Some(path) = mismatched(args_json)? {
            return self.repair_mismatch(path).await;
        }
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        let (generation, path) = self.refill(args_json).await?;
        self.with_module(generation, path).await
    }

    /// `{"path": p, "mismatch": true}`: a worker read a copy of `p` whose content does
    /// not hash to the manifest's (someone with write access to Redis altered it, or it
    /// is a copy older than the manifest). It was not run; the cached copy is rewritten
    /// from the database if it differs from it. Answers `{"generation": g, "repaired":
    /// bool}`.
    async fn repair_mismatch(&self, path: String) -> Result<String, String> {
        files::check_path(&path).map_err(|why| format!("module_miss: bad path {path:?}: {why}"))?;
        let repaired = self
            .repair_paths(std::slice::from_ref(&path))
            .await
            .map_err(|e| e.to_string())?;
        let rewritten = !repaired.rewritten.is_empty();
        if rewritten {
            self.inner.mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                path,
                generation = repaired.synced.generation,
                "a worker found a cached module that does not match the database; rewrote it from the database"
            );
        }
        Ok(json!({ "generation": repaired.synced.generation, "repaired": rewritten }).to_string())
    }

    /// `{"generation": g}`, plus the cached module when `path` is given.
    async fn with_module(&self, generation: u64, path: Option<String>) -> Result<String, String> {
        let Some(path) = path else {
            return Ok(json!({ "generation": generation }).to_string());
        };
        match self.inner.cache.read(&path).await {
            Ok(Some((content, hash))) => Ok(json!({
                "generation": generation,
                "content": content,
                "hash": hash,
            })
            .to_string()),
            Ok(None) => Err(format!("there is no module {path} in the workspace")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn refill(&self, args_json: &str) -> Result<(u64, Option<String>), String> {
        let args: serde_json::Value = serde_json::from_str(args_json)
            .map_err(|e| format!("module_miss arguments are not JSON: {e}"))?;
        let path = match args.get("path") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(p)) => Some(p.clone()),
            Some(other) => {
                return Err(format!("module_miss: `path` must be a string, got {other}"))
            }
        };
        let Some(path) = path else {
            // The whole cache: refill it unless someone already did.
            return match self.inner.cache.generation().await {
                Ok(Some(g)) => Ok((self.seen(g), None)),
                _ => self
                    .full_sync()
                    .await
                    .map(|s| (s.generation, None))
                    .map_err(|e| e.to_string()),
            };
        };
        files::check_path(&path).map_err(|why| format!("module_miss: bad path {path:?}: {why}"))?;
        // Many children may miss the same module at once: the first refills it, the
        // rest find it cached without touching the database.
        if let Ok(true) = self.inner.cache.has_content(&path).await {
            return Ok((self.generation(), Some(path)));
        }
        let synced = self
            .sync_paths(std::slice::from_ref(&path))
            .await
            .map_err(|e| e.to_string())?;
        match self.inner.cache.has_content(&path).await {
            Ok(true) => Ok((synced.generation, Some(path))),
            _ => Err(format!("there is no module {path} in the workspace")),
        }
    }

    /// Applies the changes [`read_changes`] reports until `stop`: the paths of a burst
    /// of notifications in one update, and a full sync after the listener reconnected.
    async fn follow(self, listener: PgListener, url: String, mut stop: watch::Receiver<bool>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let packages = self
            .inner
            .packages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let reader = tokio::spawn(read_changes(listener, url, tx, packages, stop.clone()));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut pending: BTreeSet<String> = BTreeSet::new();
        let mut resync = false;
        loop {
            if pending.is_empty() && !resync {
                let change = tokio::select! {
                    c = rx.recv() => c,
                    _ = stop.changed() => None,
                };
                match change {
                    Some(Change::Path(p)) => {
                        pending.insert(p);
                    }
                    Some(Change::Reconnected) => resync = true,
                    None => break,
                }
            }
            // The rest of the burst (a directory push notifies once per file).
            while pending.len() < MAX_BATCH {
                match tokio::time::timeout(COLLECT, rx.recv()).await {
                    Ok(Some(Change::Path(p))) => {
                        pending.insert(p);
                    }
                    Ok(Some(Change::Reconnected)) => resync = true,
                    Ok(None) | Err(_) => break,
                }
            }
            let done = if resync {
                self.full_sync().await.map(|s| (s, true))
            } else {
                let paths: Vec<String> = pending.iter().cloned().collect();
                self.sync_paths(&paths).await.map(|s| (s, false))
            };
            match done {
                Ok((s, full)) => {
                    tracing::debug!(
                        paths = pending.len(),
                        full,
                        generation = s.generation,
                        written = s.written,
                        removed = s.removed,
                        "module cache updated"
                    );
                    // A full sync covers whatever was pending too.
                    pending.clear();
                    resync = false;
                    backoff.reset();
                }
                Err(e) => {
                    // Kept, and tried again together with what arrives meanwhile.
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot update the module cache");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        reader.abort();
    }
}

/// The path of a `module_miss` that reports a mismatch (`"mismatch": true`), if it is one.
fn mismatched(args_json: &str) -> Result<Option<String>, String> {
    let args: serde_json::Value = serde_json::from_str(args_json)
        .map_err(|e| format!("module_miss arguments are not JSON: {e}"))?;
    if args.get("mismatch") != Some(&serde_json::Value::Bool(true)) {
        return Ok(None);
    }
    match args.get("path") {
        Some(serde_json::Value::String(p)) => Ok(Some(p.clone())),
        other => Err(format!(
            "module_miss: a mismatch needs the `path`, got {other:?}"
        )),
    }
}

/// What the database said changed.
#[derive(Debug)]
enum Change {
    /// This module was written or deleted.
    Path(String),
    /// The listener was lost and is back: notifications sent meanwhile are lost.
    Reconnected,
}

/// Reads notifications into `tx` (in a task of its own, so that no read is ever
/// cancelled half-way by the collecting loop's timeouts), reconnecting with back-off.
async fn read_changes(
    mut listener: PgListener,
    url: String,
    tx: mpsc::UnboundedSender<Change>,
    packages: Option<mpsc::UnboundedSender<()>>,
    mut stop: watch::Receiver<bool>,
) {
    let tell_packages = || {
        if let Some(p) = &packages {
            let _ = p.send(());
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let got = tokio::select! {
            n = listener.try_recv() => n,
            _ = stop.changed() => return,
        };
        match got {
            Ok(Some(n)) if n.channel() == crate::packages::CHANNEL => tell_packages(),
            Ok(Some(n)) => {
                if tx.send(Change::Path(n.payload().to_string())).is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                tracing::warn!("lost the module change listener; reconnecting");
                listener = loop {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = stop.changed() => return,
                    }
                    match listen(&url).await {
                        Ok(l) => break l,
                        Err(e) => tracing::warn!(error = %e, "cannot listen for module changes"),
                    }
                };
                backoff.reset();
                tell_packages();
                if tx.send(Change::Reconnected).is_err() {
                    return;
                }
            }
        }
    }
}

async fn listen(database_url: &str) -> Result<PgListener, ModuleError> {
    let mut listener = PgListener::connect(database_url)
        .await
        .map_err(ModuleError::listen)?;
    // A lost connection is reported (`Ok(None)`), not silently replaced: the caller
    // must know, to catch up with a full sync.
    listener.eager_reconnect(false);
    listener
        .listen_all([CHANNEL, crate::packages::CHANNEL])
        .await
        .map_err(ModuleError::listen)?;
    Ok(listener)
}
