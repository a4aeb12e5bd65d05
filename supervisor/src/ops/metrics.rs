//! The daemon's Prometheus metrics, through `prometheus-client`, in two kinds:
//!
//! - **Events**, counted where they happen: an execution started (the main loop hands
//!   it to the pool) or ended (the pool's `Finished`), its duration, a commit's size and
//!   latency (the writer), executions deleted by retention. Each is an atomic increment
//!   (plus, for the labelled two, one short lock to find the pair's counters in a cache
//!   looked up by `&str`: no allocation once a pair has been seen); nothing waits.
//! - **State**, read only when `/metrics` is scraped ([`Sources`]): the pool's queue
//!   and workers, template restarts, PostgreSQL and Redis errors and reconnects, the
//!   module cache's generation and repairs. Those already live in atomics of the parts
//!   that own them, so the hot path does nothing more for them.
//!
//! **Cardinality is bounded**: the `workflow` and `organization` labels are kept for the
//! first [`MAX_LABEL_SETS`] (workflow, organization) pairs this process sees; every
//! later pair is counted under `workflow="other", organization="other"`.
//!
//! docs/operations.md lists every metric; a test there checks the list against
//! [`Metrics::encode`]'s output.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::intake::Intake;
use crate::modules::ModuleSync;
use crate::outcome::Status;
use crate::pool::Pool;
use crate::serve::outage::RedisOutage;
use crate::store::Store;

/// Distinct (workflow, organization) label pairs kept per process; later ones fold
/// into [`OTHER`].
pub const MAX_LABEL_SETS: usize = 100;
/// The label value of pairs past the cap.
pub const OTHER: &str = "other";
/// The `organization` label of executions that belong to none.
pub const NO_ORG: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartedLabels {
    workflow: String,
    organization: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabels {
    status: String,
    workflow: String,
    organization: String,
}

/// The writer's two histograms: executions per committed transaction, and how long
/// the transaction took. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct CommitMetrics {
    size: Histogram,
    seconds: Histogram,
}

impl CommitMetrics {
    /// One committed transaction of `size` executions that took `took`.
    pub fn observe(&self, size: usize, took: Duration) {
        self.size.observe(size as f64);
        self.seconds.observe(took.as_secs_f64());
    }
}

/// The parts of a running daemon whose state `/metrics` reads at scrape time.
pub struct Sources {
    pub pool: Pool,
    /// Templates the pool was started with (restarts are starts beyond these).
    pub workers: usize,
    pub store: Store,
    pub intake: Intake,
    pub modules: ModuleSync,
    pub outage: RedisOutage,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// Every metric of one daemon. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    started: Family<StartedLabels, Counter>,
    ended: Family<EndedLabels, Counter>,
    duration: Histogram,
    commit: CommitMetrics,
    retention_deleted: Counter,
    labels: Mutex<LabelCap>,
    /// The counters of the pairs seen so far, by workflow then organization.
    series: Mutex<HashMap<String, HashMap<String, Arc<PairSeries>>>>,
    /// The counters every pair past the cap shares (not cached per pair: the cache
    /// stays bounded by the cap).
    other: OnceLock<Arc<PairSeries>>,
    state: Arc<StateCollector>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("warden");
        let started = Family::<StartedLabels, Counter>::default();
        registry.register(
            "executions_started",
            "Executions handed to the worker pool, by workflow and organization",
            started.clone(),
        );
        let ended = Family::<EndedLabels, Counter>::default();
        registry.register(
            "executions_ended",
            "Executions that ended in the pool, by terminal status, workflow and organization",
            ended.clone(),
        );
        // 1 ms to ~65 s.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "execution_duration_seconds",
            "Dispatch-to-end time of executions that ended in the pool",
            duration.clone(),
        );
        let commit = CommitMetrics {
            // 1 to 1,024 executions per transaction.
            size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            // 0.5 ms to ~1 s.
            seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 12)),
        };
        registry.register(
            "commit_batch_size",
            "Executions written per committed result transaction",
            commit.size.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "Time of each committed result transaction",
            commit.seconds.clone(),
        );
        let retention_deleted = Counter::default();
        registry.register(
            "retention_deleted_executions",
            "Ended executions (with their logs) deleted by --retention",
            retention_deleted.clone(),
        );
        let state = Arc::new(StateCollector::default());
        registry.register_collector(Box::new(state.clone()));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                started,
                ended,
                duration,
                commit,
                retention_deleted,
                labels: Mutex::new(LabelCap::new(MAX_LABEL_SETS)),
                series: Mutex::default(),
                other: OnceLock::new(),
                state,
            }),
        }
    }

    /// The parts whose state is read at scrape time; set once, after start-up.
    pub fn set_sources(&self, sources: Sources) {
        let _ = self.inner.state.sources.set(sources);
    }

    /// An execution handed to the pool.
    pub fn started(&self, workflow: &str, org: Option<&str>) {
        self.series(workflow, org).started.inc();
    }

    /// An execution that ended in the pool.
    pub fn ended(&self, status: Status, workflow: &str, org: Option<&str>, took: Duration) {
        let pair = self.series(workflow, org);
        pair.ended[status_index(status)]
            .get_or_init(|| {
                self.inner
                    .ended
                    .get_or_create(&EndedLabels {
                        status: status.as_str().to_string(),
                        workflow: pair.labels.0.clone(),
                        organization: pair.labels.1.clone(),
                    })
                    .clone()
            })
            .inc();
        self.inner.duration.observe(took.as_secs_f64());
    }

    /// The writer's histograms.
    pub fn commit(&self) -> CommitMetrics {
        self.inner.commit.clone()
    }

    /// Executions deleted by retention.
    pub fn retention_deleted(&self, n: u64) {
        self.inner.retention_deleted.inc_by(n);
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// The counters of a (workflow, organization) pair: from the cache, or made once
    /// (under the cap's labels: its own, or [`OTHER`]'s).
    fn series(&self, workflow: &str, org: Option<&str>) -> Arc<PairSeries> {
        let org = org.unwrap_or(NO_ORG);
        let mut cache = self.inner.series.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pair) = cache.get(workflow).and_then(|by_org| by_org.get(org)) {
            return pair.clone();
        }
        let labels = self
            .inner
            .labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(workflow, org);
        if labels.0 == OTHER && labels.1 == OTHER {
            return self
                .inner
                .other
                .get_or_init(|| Arc::new(self.pair_series(labels)))
                .clone();
        }
        let pair = Arc::new(self.pair_series(labels));
        cache
            .entry(workflow.to_string())
            .or_default()
            .insert(org.to_string(), pair.clone());
        pair
    }

    fn pair_series(&self, labels: (String, String)) -> PairSeries {
        PairSeries {
            started: self
                .inner
                .started
                .get_or_create(&StartedLabels {
                    workflow: labels.0.clone(),
                    organization: labels.1.clone(),
                })
                .clone(),
            ended: Default::default(),
            labels,
        }
    }
}

/// One (workflow, organization) pair's counters (shared with the registry's families:
/// a counter is a handle on one atomic).
struct PairSeries {
    /// The labels it counts under (its own, or [`OTHER`]'s past the cap).
    labels: (String, String),
    started: Counter,
    /// By [`Status`] ([`status_index`]), made at the first execution ending so.
    ended: [OnceLock<Counter>; 5],
}

/// Where a status's counter sits in [`PairSeries::ended`] (a new status is a compile
/// error here, not an index out of bounds).
fn status_index(status: Status) -> usize {
    match status {
        Status::Success => 0,
        Status::Failed => 1,
        Status::Timeout => 2,
        Status::Cancelled => 3,
        Status::Crashed => 4,
    }
}

/// The (workflow, organization) pairs given their own series so far.
#[derive(Debug)]
struct LabelCap {
    seen: HashSet<(String, String)>,
    max: usize,
}

impl LabelCap {
    fn new(max: usize) -> LabelCap {
        LabelCap {
            seen: HashSet::new(),
            max,
        }
    }

    /// The labels to count this pair under: itself while there is room (or it already
    /// has a series), [`OTHER`] for both after that.
    fn admit(&mut self, workflow: &str, org: &str) -> (String, String) {
        let pair = (workflow.to_string(), org.to_string());
        if self.seen.contains(&pair) {
            return pair;
        }
        if self.seen.len() < self.max {
            self.seen.insert(pair.clone());
            return pair;
        }
        (OTHER.to_string(), OTHER.to_string())
    }
}

/// Reads [`Sources`] when scraped (nothing before start-up has finished).
#[derive(Debug, Default)]
struct StateCollector {
    sources: OnceLock<Sources>,
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let Some(s) = self.sources.get() else {
            return Ok(());
        };
        let pool = s.pool.stats();
        gauge(
            &mut enc,
            "queue_depth",
            "Executions waiting in this supervisor's pool for a free worker",
            &[(&[], pool.queued as i64)],
        )?;
        let idle = pool.ready.saturating_sub(pool.busy);
        let unavailable = pool.workers.saturating_sub(pool.ready);
        gauge(
            &mut enc,
            "workers",
            "Worker templates by state: busy (running an execution), idle, or unavailable (starting or restarting)",
            &[
                (&[("state", "busy")], pool.busy as i64),
                (&[("state", "idle")], idle as i64),
                (&[("state", "unavailable")], unavailable as i64),
            ],
        )?;
        counter(
            &mut enc,
            "template_restarts",
            "Worker templates started to replace one that died or was recycled",
            &[(&[], pool.templates_started.saturating_sub(s.workers as u64))],
        )?;
        counter(
            &mut enc,
            "postgres_errors",
            "PostgreSQL statements or transactions of the reader and the writer that failed (and were retried or split)",
            &[(&[], s.store.errors())],
        )?;
        counter(
            &mut enc,
            "postgres_reconnects",
            "PostgreSQL connections opened after start-up to replace one that was lost",
            &[(&[], s.store.reconnects())],
        )?;
        counter(
            &mut enc,
            "redis_errors",
            "Redis commands of the intake, reader and acker that failed",
            &[(&[], s.intake.errors())],
        )?;
        counter(
            &mut enc,
            "redis_reconnects",
            "Times Redis answered again after an outage of the side paths (acknowledgements, live logs, status)",
            &[(&[], s.outage.recoveries())],
        )?;
        gauge(
            &mut enc,
            "module_cache_generation",
            "The module cache generation this supervisor last saw",
            &[(&[], s.modules.generation() as i64)],
        )?;
        let r = s.modules.repairs();
        counter(
            &mut enc,
            "module_cache_repairs",
            "Module cache repairs: wipe (the whole cache refilled), miss (a worker's missing module re-cached), mismatch (a copy that did not match the database rewritten)",
            &[
                (&[("kind", "wipe")], r.wipes),
                (&[("kind", "miss")], r.misses),
                (&[("kind", "mismatch")], r.mismatches),
            ],
        )?;
        Ok(())
    }
}

type Series<'a, N> = (&'a [(&'a str, &'a str)], N);

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[Series<i64>],
) -> fmt::Result {
    let ty = ConstGauge::new(0i64).metric_type();
    let mut family = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, value) in series {
        let sample = family.encode_family(labels)?;
        ConstGauge::new(*value).encode(sample)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[Series<u64>],
) -> fmt::Result {
    let ty = ConstCounter::new(0u64).metric_type();
    let mut family = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, value) in series {
        let sample = family.encode_family(labels)?;
        ConstCounter::new(*value).encode(sample)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_pairs_past_the_cap_fold_into_other() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.admit("a", "x"), ("a".into(), "x".into()));
        assert_eq!(cap.admit("b", "x"), ("b".into(), "x".into()));
        assert_eq!(cap.admit("c", "x"), (OTHER.into(), OTHER.into()));
        // Pairs already seen keep their own series.
        assert_eq!(cap.admit("a", "x"), ("a".into(), "x".into()));
        assert_eq!(cap.admit("a", "y"), (OTHER.into(), OTHER.into()));
    }

    #[test]
    fn events_show_in_the_exposition_with_their_labels() {
        let m = Metrics::new();
        m.started("double", Some("acme"));
        m.started("double", Some("acme"));
        m.ended(
            Status::Success,
            "double",
            Some("acme"),
            Duration::from_millis(3),
        );
        m.ended(Status::Failed, "double", None, Duration::from_millis(3));
        m.commit().observe(2, Duration::from_millis(1));
        m.retention_deleted(5);
        let text = m.encode();
        assert!(
            text.contains(
                r#"warden_executions_started_total{workflow="double",organization="acme"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"warden_executions_ended_total{status="success",workflow="double",organization="acme"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"warden_executions_ended_total{status="failed",workflow="double",organization="none"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("warden_execution_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("warden_commit_batch_size_sum 2.0"), "{text}");
        assert!(
            text.contains("warden_retention_deleted_executions_total 5"),
            "{text}"
        );
        // No sources yet: no state metrics, and a complete exposition.
        assert!(!text.contains("warden_queue_depth"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn past_the_cap_every_series_is_other() {
        let m = Metrics::new();
        for i in 0..MAX_LABEL_SETS + 10 {
            m.started(&format!("wf{i}"), None);
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("warden_executions_started_total{"))
            .count();
        assert_eq!(series, MAX_LABEL_SETS + 1, "{text}");
        assert!(
            text.contains(
                r#"warden_executions_started_total{workflow="other",organization="other"} 10"#
            ),
            "{text}"
        );
    }

    /// What the main loop pays per execution with `--http` on: one `started`, one
    /// `ended` (a duration observed), and 1/20 of a commit observed. Run in release:
    /// `cargo test --release -p warden --lib cost_per_execution -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; run it in release"]
    fn cost_per_execution() {
        let m = Metrics::new();
        let commit = m.commit();
        let orgs = ["acme", "globex", "initech"];
        let n = 1_000_000;
        let t = std::time::Instant::now();
        for i in 0..n {
            let org = Some(orgs[i % 3]);
            m.started("double", org);
            m.ended(Status::Success, "double", org, Duration::from_micros(900));
            if i % 20 == 0 {
                commit.observe(20, Duration::from_millis(2));
            }
        }
        let per = t.elapsed() / n as u32;
        println!("metrics cost per execution: {per:?}");
        // A fork-mode execution costs about a millisecond of CPU: stay far below 1%.
        assert!(per < Duration::from_micros(5), "{per:?}");
    }
}
