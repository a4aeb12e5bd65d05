//! What the benchmark runs: the trivial function (the pool's and the pipeline's own
//! overhead), and the SDK workload, a function that uses the workflow SDK the way a
//! typical workflow does: 5 `config.get` (answered from the context, no round trip),
//! 5 `kv.set` (buffered, applied in the result transaction) and 20 log lines; and the
//! modules workload, a function importing 10 workspace modules (crate::modules::bench).

use crate::sdk::cache::{ConfigSnapshot, ScopeConfig};
use crate::sdk::{Scope, Sdk};
use crate::store::{ConfigKind, Store};

pub use super::TRIVIAL;

pub const SDK: &str = r#"from warden import config, kv, log

KEYS = ("region", "retries", "endpoint", "batch_size", "feature")

def run(x):
    settings = {k: config.get(k) for k in KEYS}
    for i in range(5):
        kv.set(f"bench:{x}:{i}", {"x": x, "i": i})
    for i in range(20):
        log.info("step", i=i, x=x, region=settings["region"])
    return {"y": x * 2, "retries": settings["retries"]}
"#;

/// The retries workload: one execution in ten fails its first attempt and is retried
/// (policy: 1 retry, back-off up to 100 ms), the others are trivial.
pub const RETRIES: &str = r#"from warden import context

def run(x):
    if context.attempt == 1 and x % 10 == 0:
        raise ValueError("transient")
    return {"y": x * 2}
"#;

/// The requests workload: a workflow that imports `requests` (with its dependencies,
/// about 70 modules) and uses it lightly. Without `--preload requests`, every fork-mode
/// child imports it afresh; with it, the template imported it once.
pub const REQUESTS: &str = r#"import requests

def run(x):
    return {"y": x * 2, "requests": requests.__version__}
"#;

/// Where `bench --workload requests` installs `requests` (kept between runs: the set is
/// found by its content hash; not under /tmp, which templates see privately).
const REQUESTS_ROOT: &str = "/var/lib/warden/bench-packages";

/// The package set the requests workload imports from: installed with pip on first use.
pub async fn requests_set() -> Result<std::path::PathBuf, String> {
    use crate::packages::install;
    let lines = [("requests".to_string(), "requests".to_string())];
    let hash = install::content_hash(&lines);
    let root = std::path::Path::new(REQUESTS_ROOT);
    if let Some(dir) = install::find_installed(root, &hash) {
        return Ok(dir);
    }
    install::install(&crate::pycheck::python(), root, 0, &hash, &lines)
        .await
        .map_err(|e| e.to_string())
}

/// The global config the SDK workload reads.
const CONFIG: [(&str, &str); 5] = [
    ("region", "\"eu-west-1\""),
    ("retries", "3"),
    ("endpoint", "\"https://api.example.com\""),
    ("batch_size", "100"),
    ("feature", "true"),
];

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Trivial,
    Sdk,
    /// Imports 10 workspace modules (crate::modules::bench).
    Modules,
    /// 10% fail once and are retried ([`RETRIES`]).
    Retries,
    /// Imports `requests` from an installed package set ([`REQUESTS`]; `--local` only).
    Requests,
    /// A large organization's backlog and a small one's trickle, with and without fair
    /// intake ([`FAIRNESS`]; end to end only: crate::bench::fairness).
    Fairness,
}

/// The fairness workload: returns when it started (the bench measures submit → start).
pub const FAIRNESS: &str = "import time\n\ndef run(x):\n    return {\"started\": time.time()}\n";

/// Which workloads to measure (`--workload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workloads {
    Trivial,
    Sdk,
    Both,
    /// The trivial workload, then the one importing 10 workspace modules.
    Modules,
    /// Every workload.
    All,
    /// The trivial workload, then the one where 10% of executions are retried once.
    Retries,
    /// The one importing `requests` (`--local` only; compare with and without
    /// `--preload requests`).
    Requests,
    /// Organization A submits `-n` executions at once while organization B submits one
    /// every 50 ms: B's submit-to-start latency with fair intake, then with one FIFO
    /// stream (end to end only).
    Fairness,
}

impl Workloads {
    pub fn list(self) -> &'static [Workload] {
        match self {
            Workloads::Trivial => &[Workload::Trivial],
            Workloads::Sdk => &[Workload::Sdk],
            Workloads::Both => &[Workload::Trivial, Workload::Sdk],
            Workloads::Modules => &[Workload::Trivial, Workload::Modules],
            Workloads::All => &[Workload::Trivial, Workload::Sdk, Workload::Modules],
            Workloads::Retries => &[Workload::Trivial, Workload::Retries],
            Workloads::Requests => &[Workload::Requests],
            Workloads::Fairness => &[Workload::Fairness],
        }
    }
}

impl Workload {
    /// Also the workflow's name in the scratch database.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Trivial => "trivial",
            Workload::Sdk => "sdk",
            Workload::Modules => "modules",
            Workload::Retries => "retries",
            Workload::Requests => "requests",
            Workload::Fairness => "fairness",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Workload::Trivial => TRIVIAL,
            Workload::Sdk => SDK,
            Workload::Modules => crate::modules::bench::WORKFLOW,
            Workload::Retries => RETRIES,
            Workload::Requests => REQUESTS,
            Workload::Fairness => FAIRNESS,
        }
    }

    /// The retry policy its workflow is pushed with.
    pub fn retry_policy(self) -> Option<crate::retry_policy::RetryPolicy> {
        (self == Workload::Retries).then(|| crate::retry_policy::RetryPolicy {
            retries: 1,
            backoff_base_ms: 100,
            backoff_cap_ms: 100,
            ..Default::default()
        })
    }

    /// Stores what the workload reads (the SDK workload's global config, the modules
    /// workload's modules).
    pub async fn setup(self, store: &Store) -> Result<(), String> {
        if self == Workload::Modules {
            crate::modules::bench::setup(store).await?;
        }
        if self == Workload::Sdk {
            for (key, value) in CONFIG {
                let value: serde_json::Value =
                    serde_json::from_str(value).map_err(|e| e.to_string())?;
                store
                    .set_config(None, key, &value, ConfigKind::of(&value))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// The context `serve` would send, for `--local` (no services).
    pub fn local_context(self) -> String {
        if self != Workload::Sdk {
            return "{}".into();
        }
        let values = CONFIG
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), serde_json::from_str(v).ok()?)))
            .collect();
        let snapshot = ConfigSnapshot::from_scopes([(
            Scope::Global,
            ScopeConfig::new(values, Default::default()),
        )]);
        Sdk::context_json(r#"{"workflow":"sdk"}"#, &snapshot, None, 0.0, 0.0)
    }
}
