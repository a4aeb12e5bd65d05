//! [`Sdk`]: everything `warden serve` does for the workflow SDK, behind one handle with
//! one method per place the daemon calls it:
//!
//! ```text
//!  prepare (per batch)   configs_for_batch ── one Redis read ──▶ context_json (per dispatch)
//!  main loop             PoolEvent::Request ──▶ handle (spawned; store pool / cache)
//!                        PoolEvent::Log     ──▶ on_log      (redact)
//!                        PoolEvent::Finished ─▶ on_finished (redact, check writes)
//!  writer ─ Committed ─▶ after_commit (bump config generations) ─▶ acker
//! ```
//!
//! The writes themselves are applied by the result transaction (crate::store::commit);
//! this handle only makes sure what reaches it is redacted and well-formed, and that
//! the config cache forgets a scope once a committed execution changed it, before the
//! execution's completion is published.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use warden_protocol::{ErrorInfo, Log, Reply, Request};

use crate::intake::Keys;
use crate::outcome::{ExecutionId, ExecutionOutcome, Status};
use crate::sdk::cache::{ConfigCache, ConfigSnapshot};
use crate::sdk::crypto::{Envelope, Scope, SecretKey};
use crate::sdk::handler::{self, Asker, Sources};
use crate::sdk::redact::Redactions;
use crate::sdk::writes::SdkWrites;
use crate::sdk::SdkError;
use crate::store::{Backoff, Committed, Disposition, Store};

/// The most [`Sdk::after_commit`] spends invalidating the config cache for one batch.
const INVALIDATE_WITHIN: Duration = Duration::from_secs(2);

/// The `error_type` of a successful execution whose SDK writes cannot be applied.
pub const SDK_WRITE_ERROR: &str = "SdkWriteError";

/// The daemon's SDK handle. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sdk {
    sources: Sources,
    /// Successful executions that changed config, by id, until their commit is reported.
    invalidations: Arc<Mutex<HashMap<ExecutionId, Scope>>>,
}

impl Sdk {
    /// Opens the config cache's Redis connection and checks the secret key against the
    /// stored secrets: a wrong key is refused here, with the reason, rather than on
    /// every read; a missing key is only a warning (executions that read no secret run
    /// fine, and those that do get a clear error).
    pub async fn start(
        store: Store,
        redis: &redis::Client,
        keys: Keys,
        key: Option<SecretKey>,
    ) -> Result<Sdk, SdkError> {
        let cache = ConfigCache::connect(redis, keys, store.clone()).await?;
        check_key(&store, key.as_ref()).await?;
        Ok(Sdk {
            sources: Sources {
                store,
                cache,
                key,
                redactions: Redactions::default(),
            },
            invalidations: Arc::default(),
        })
    }

    pub fn cache(&self) -> &ConfigCache {
        &self.sources.cache
    }

    pub fn redactions(&self) -> &Redactions {
        &self.sources.redactions
    }

    /// The configs of a batch's organizations (and the global one): one Redis read, one
    /// query on a miss. Retries database errors with back-off until it succeeds, like
    /// the rest of the batch's preparation: a batch is never dispatched with a config
    /// it could not read.
    pub async fn configs_for_batch(
        &self,
        org_ids: impl IntoIterator<Item = Option<i64>>,
    ) -> ConfigSnapshot {
        let mut scopes: Vec<Scope> = vec![Scope::Global];
        scopes.extend(org_ids.into_iter().flatten().map(Scope::Org));
        let mut backoff = Backoff::default();
        loop {
            match self.sources.cache.load(&scopes).await {
                Ok(snapshot) => return snapshot,
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot load the batch's configs; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// `base` (the intake's context object) with the SDK's config layers and ROI
    /// defaults (see crate::sdk::context).
    pub fn context_json(
        base: &str,
        snapshot: &ConfigSnapshot,
        org_id: Option<i64>,
        time_saved_seconds: f64,
        value: f64,
    ) -> String {
        crate::sdk::context::extend(base, snapshot, org_id, time_saved_seconds, value)
    }

    /// Whether `op` is an SDK read this handle answers.
    pub fn handles(op: &str) -> bool {
        handler::OPS.contains(&op)
    }

    /// Answers `req` on a task of its own (it may wait for the database) and hands the
    /// reply to `reply` (normally `Pool::reply`). `org_id` is the asking execution's
    /// organization, from what the daemon knows about it, never from the request.
    pub fn handle(
        &self,
        req: Request,
        org_id: Option<i64>,
        reply: impl FnOnce(Reply) + Send + 'static,
    ) {
        // Tracked from now (synchronously, while the daemon knows it is running) until
        // its outcome is redacted.
        self.sources.redactions.open(&req.execution_id);
        let sources = self.sources.clone();
        tokio::spawn(async move {
            let answer = handler::answer(&sources, &req, Asker { org_id }).await;
            reply(answer);
        });
    }

    /// Redacts a log line before it is published or kept.
    pub fn on_log(&self, log: &mut Log) {
        self.sources.redactions.log(log);
    }

    /// Call once per finished execution, before its outcome goes anywhere: redacts the
    /// secrets it was sent, and checks its SDK writes. A success whose writes cannot be
    /// applied becomes `failed` / [`SDK_WRITE_ERROR`] (its result is not recorded either:
    /// an execution succeeds with all its effects or not at all).
    pub fn on_finished(&self, out: &mut ExecutionOutcome, org_id: Option<i64>) {
        self.sources.redactions.finish(out);
        if out.status != Status::Success || out.sdk_writes_json.is_empty() {
            return;
        }
        match SdkWrites::parse(&out.sdk_writes_json) {
            Ok(w) => {
                if !w.config.is_empty() {
                    self.pending()
                        .insert(out.execution_id.clone(), Scope::from_org(org_id));
                }
            }
            Err(e) => {
                tracing::warn!(execution = %out.execution_id, error = %e, "SDK writes refused");
                out.status = Status::Failed;
                out.result_json = None;
                out.sdk_writes_json.clear();
                out.error = Some(ErrorInfo {
                    error_type: SDK_WRITE_ERROR.into(),
                    message: format!(
                        "the execution returned, but its SDK writes cannot be applied: {e}"
                    ),
                    traceback: String::new(),
                });
            }
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<ExecutionId, Scope>> {
        self.invalidations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts itself between the writer and the acker: for each committed batch, bumps the
    /// config generation of every scope a recorded success changed, then passes the
    /// batch on. Completions are published only after that, so a client that saw one
    /// and starts another execution gets the new config.
    pub fn after_commit(
        &self,
        mut committed: mpsc::Receiver<Vec<Committed>>,
    ) -> mpsc::Receiver<Vec<Committed>> {
        let (tx, rx) = mpsc::channel(16);
        let sdk = self.clone();
        tokio::spawn(async move {
            while let Some(batch) = committed.recv().await {
                let scopes: BTreeSet<Scope> = {
                    let mut pending = sdk.pending();
                    if pending.is_empty() {
                        BTreeSet::new()
                    } else {
                        batch
                            .iter()
                            .filter_map(|c| {
                                let scope = pending.remove(&c.execution_id)?;
                                (c.disposition == Disposition::Recorded
                                    && c.status == Status::Success)
                                    .then_some(scope)
                            })
                            .collect()
                    }
                };
                if !scopes.is_empty() {
                    // Bounded: while Redis is away this must not hold up the writer's
                    // reports (and so its commits); the cache's TTL bounds staleness.
                    let scopes: Vec<Scope> = scopes.into_iter().collect();
                    if tokio::time::timeout(INVALIDATE_WITHIN, sdk.invalidate(&scopes))
                        .await
                        .is_err()
                    {
                        tracing::error!(
                            "could not invalidate the config cache in time; changed config \
                             may be served stale for up to {} s",
                            crate::sdk::cache::CACHE_TTL.as_secs()
                        );
                    }
                }
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Bumps the generations of `scopes`, a few times if Redis hiccups; past that the
    /// cache's TTL bounds how long the old values are served.
    async fn invalidate(&self, scopes: &[Scope]) {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        for attempt in 1..=5 {
            match self.sources.cache.invalidate(scopes).await {
                Ok(()) => return,
                Err(e) if attempt == 5 => tracing::error!(
                    error = %e,
                    "could not invalidate the config cache; changed config may be served \
                     stale for up to {} s",
                    crate::sdk::cache::CACHE_TTL.as_secs()
                ),
                Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }
}

/// Fails when a key is configured and does not open a stored secret; warns when
/// secrets are stored and no key is configured.
async fn check_key(store: &Store, key: Option<&SecretKey>) -> Result<(), SdkError> {
    let Some(row) = store.any_secret().await? else {
        return Ok(());
    };
    let scope = Scope::from_org(row.org_id);
    match key {
        None => {
            tracing::warn!(
                "secret config values are stored but no secret key is configured \
                 (--secret-key-file or WARDEN_SECRET_KEY): executions that read a secret will fail"
            );
            Ok(())
        }
        Some(key) => {
            let envelope: Envelope =
                serde_json::from_value(row.value).map_err(|_| SdkError::Undecryptable {
                    scope,
                    key: row.key.clone(),
                    reason: "it is not a sealed envelope".into(),
                })?;
            key.open(scope, &row.key, &envelope).map(drop)
        }
    }
}
