//! `warden workflow push|list`: store workflows (source and how to run them, and how
//! many may run at once: `--max-concurrency`, see crate::cmd::org).
//!
//! A push checks every file before storing any: a `.py` file that parses and defines
//! the function to call at top level, checked without running it ([`crate::pycheck`]).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::pycheck::{self, PyCheckError};
use crate::retry_policy::{RetryOn, RetryPolicy};
use crate::store::{PushAction, WorkflowSpec};

/// The retry policy flags of a push (crate::retry_policy). None given: no retries.
#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
    /// How many times a failed attempt is tried again (0: never; at most 100).
    #[arg(long)]
    pub retries: Option<u32>,
    /// Back-off before a retry, `BASE[,CAP]` (`1s,5m`): the wait after attempt n is
    /// random in [0, min(CAP, BASE * 2^(n-1))] ("full jitter"). Default `1s,5m`.
    #[arg(long, value_name = "BASE[,CAP]", value_parser = crate::retry_policy::parse_backoff)]
    pub retry_backoff: Option<(std::time::Duration, std::time::Duration)>,
    /// Which ends are retried: any of failed, timeout, crashed (default: all three;
    /// `cancelled` never is).
    #[arg(long, value_name = "LIST", value_parser = parse_retry_on)]
    pub retry_on: Option<RetryOnList>,
    /// Retry a failed attempt only if it raised this exception class (repeatable).
    #[arg(long = "retry-exception", value_name = "CLASS")]
    pub retry_exceptions: Vec<String>,
    /// Never retry an attempt that raised this exception class (repeatable).
    #[arg(long = "no-retry-exception", value_name = "CLASS")]
    pub never_retry_exceptions: Vec<String>,
}

/// `--retry-on`'s value: one flag, a comma-separated list (a newtype, so clap takes it
/// as one value rather than as a repeated flag).
#[derive(Debug, Clone)]
pub struct RetryOnList(pub Vec<RetryOn>);

fn parse_retry_on(text: &str) -> Result<RetryOnList, String> {
    crate::retry_policy::parse_retry_on(text).map(RetryOnList)
}

impl RetryArgs {
    /// The policy the flags describe (`None`: no flag given, or `--retries 0` alone).
    pub fn policy(&self) -> Option<RetryPolicy> {
        let given = self.retries.is_some_and(|n| n > 0)
            || self.retry_backoff.is_some()
            || self.retry_on.is_some()
            || !self.retry_exceptions.is_empty()
            || !self.never_retry_exceptions.is_empty();
        if !given {
            return None;
        }
        let mut p = RetryPolicy {
            retries: self.retries.unwrap_or(0),
            ..RetryPolicy::default()
        };
        if let Some((base, cap)) = self.retry_backoff {
            p.backoff_base_ms = base.as_millis() as u64;
            p.backoff_cap_ms = cap.as_millis() as u64;
        }
        if let Some(on) = &self.retry_on {
            p.retry_on = on.0.clone();
        }
        p.retry_exceptions = self.retry_exceptions.clone();
        p.never_retry_exceptions = self.never_retry_exceptions.clone();
        Some(p)
    }
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCmd {
    /// Store a workflow from a Python file (updates it when the name exists), or every
    /// `.py` file of a directory, each named after its file.
    Push {
        /// The workflow's Python file, or a directory of them (`tickets.py` becomes the
        /// workflow `tickets`; the other flags apply to each).
        file: PathBuf,
        /// Its name, unique within its organization (default: the file name without
        /// `.py`; not with a directory).
        #[arg(long)]
        name: Option<String>,
        /// The function to call.
        #[arg(long, default_value = "run")]
        function: String,
        /// Default deadline of its executions (`30`, `500ms`, `2m`).
        #[arg(long, value_parser = crate::args::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Organization (created if new); none: a global workflow.
        #[arg(long)]
        org: Option<String>,
        /// Seconds of human work one successful execution saves (ROI metrics).
        #[arg(long)]
        time_saved: Option<f64>,
        /// Value of one successful execution (ROI metrics).
        #[arg(long)]
        value: Option<f64>,
        /// At most this many of its executions run at once, across all supervisors
        /// (0: unlimited). Executions over it wait in their queue. Not given: the
        /// stored limit stays (none for a new workflow).
        #[arg(long, value_name = "N")]
        max_concurrency: Option<u32>,
        #[command(flatten)]
        retry: Box<RetryArgs>,
    },
    /// The versions of a workflow, oldest first: a push that changes the source makes
    /// a new one.
    History {
        /// The workflow's name.
        name: String,
        /// Its organization (none: the global workflow of that name).
        #[arg(long)]
        org: Option<String>,
        /// One JSON array of objects (`version`, `source_hash`, `pushed_at`) instead of
        /// the table.
        #[arg(long)]
        json: bool,
    },
    /// List stored workflows.
    List {
        /// One JSON array of objects (`id`, `org`, `name`, `path`, `function`,
        /// `timeout_ms`, `active`, `version`, `max_concurrency`, `updated_at`) instead
        /// of the table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(conn: ConnArgs, cmd: WorkflowCmd) -> Result<i32, CliError> {
    let store = conn.store().await?;
    match cmd {
        WorkflowCmd::Push {
            file,
            name,
            function,
            timeout,
            org,
            time_saved,
            value,
            max_concurrency,
            retry,
        } => {
            let retry_policy = retry.policy();
            if let Some(Err(reason)) = retry_policy.as_ref().map(RetryPolicy::validate) {
                return Err(CliError::InvalidInput(format!("{reason}; nothing stored")));
            }
            // Every file is read and checked before anything is stored.
            let mut specs = Vec::new();
            for (file, name) in workflow_files(&file, name)? {
                check_extension(&file)?;
                let source = std::fs::read_to_string(&file).map_err(|source| CliError::Read {
                    what: "workflow file",
                    path: file.clone(),
                    source,
                })?;
                check_source(&file, &source, &function)?;
                let path = file
                    .file_name()
                    .map(|f| format!("workflows/{}", f.to_string_lossy()))
                    .unwrap_or_else(|| format!("workflows/{name}.py"));
                specs.push(WorkflowSpec {
                    org: org.clone(),
                    name,
                    path,
                    function_name: function.clone(),
                    source,
                    default_timeout_ms: timeout.map(|t| t.as_millis().min(i32::MAX as u128) as i32),
                    time_saved_seconds: time_saved,
                    value,
                    retry_policy: retry_policy.clone(),
                });
            }
            // A new workflow of an organization with a limit changes the mirror too
            // (a request naming it by id counts against its organization).
            let org_limited = match org.as_deref() {
                Some(o) => store.org_max_concurrency(o).await?.is_some_and(|n| n > 0),
                None => false,
            };
            for spec in specs {
                let name = &spec.name;
                let r = store.push_workflow(&spec).await?;
                if let Some(max) = max_concurrency {
                    store.set_workflow_max_concurrency(r.id, max).await?;
                }
                let what = match r.action {
                    PushAction::Created => "created",
                    PushAction::Updated => "updated",
                    PushAction::Unchanged => "unchanged",
                };
                println!(
                    "workflow {name} {what} (id {}, version {})",
                    r.id, r.version
                );
            }
            if max_concurrency.is_some() || org_limited {
                super::org::publish_limits(&conn, &store).await?;
            }
        }
        WorkflowCmd::History { name, org, json } => {
            let Some(versions) = store.workflow_history(org.as_deref(), &name).await? else {
                store.close().await;
                return Err(CliError::InvalidInput(match org {
                    Some(o) => format!(
                        "there is no workflow {name} in organization {o}; `warden workflow list` shows them"
                    ),
                    None => format!(
                        "there is no global workflow {name} (pass --org for an organization's); \
                         `warden workflow list` shows them"
                    ),
                }));
            };
            if json {
                let items = versions.iter().map(|v| {
                    serde_json::json!({
                        "version": v.version,
                        "source_hash": v.source_hash,
                        "pushed_at": super::json::time(v.pushed_at),
                    })
                });
                super::json::print(&serde_json::Value::Array(items.collect()));
            } else {
                let rows: Vec<Vec<String>> = versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.to_string(),
                            v.pushed_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            v.source_hash.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    super::table::render(&["version", "pushed (UTC)", "source sha256"], &rows)
                );
            }
        }
        WorkflowCmd::List { json } => {
            let all = store.list_workflows().await?;
            if json {
                let items = all.iter().map(|w| {
                    serde_json::json!({
                        "id": w.id,
                        "org": w.org,
                        "name": w.name,
                        "path": w.path,
                        "function": w.function_name,
                        "timeout_ms": w.default_timeout_ms,
                        "active": w.active,
                        "version": w.version,
                        "max_concurrency": w.max_concurrency,
                        "updated_at": super::json::time(w.updated_at),
                    })
                });
                super::json::print(&serde_json::Value::Array(items.collect()));
                store.close().await;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = all
                .into_iter()
                .map(|w| {
                    vec![
                        w.id.to_string(),
                        w.org.unwrap_or_else(|| "-".into()),
                        w.name,
                        w.path,
                        w.function_name,
                        w.default_timeout_ms
                            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                            .unwrap_or_else(|| "default".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                super::table::render_aligned(
                    &["id", "org", "name", "path", "function", "timeout"],
                    &rows,
                    &[0, 5],
                )
            );
        }
    }
    store.close().await;
    Ok(0)
}

/// Refuses a workflow file that is not named `*.py` (before reading it).
fn check_extension(file: &Path) -> Result<(), CliError> {
    if file.extension().is_none_or(|x| x != "py") {
        return Err(CliError::InvalidInput(format!(
            "{} is not a Python file: a workflow is a .py file; nothing stored",
            file.display()
        )));
    }
    Ok(())
}

/// Refuses a workflow source that does not parse or has no top-level function
/// `function`; the code itself never runs (see [`crate::pycheck`]).
fn check_source(file: &Path, source: &str, function: &str) -> Result<(), CliError> {
    let functions = pycheck::top_level_functions(source).map_err(|e| match e {
        PyCheckError::Syntax { line, message } => CliError::InvalidInput(format!(
            "{}:{line}: syntax error: {message}; nothing stored",
            file.display()
        )),
        e @ PyCheckError::Interpreter { .. } => {
            CliError::InvalidInput(format!("{e}; nothing stored"))
        }
    })?;
    if !functions.iter().any(|f| f == function) {
        let defined = if functions.is_empty() {
            "it defines no top-level function".to_string()
        } else {
            format!("it defines {}", functions.join(", "))
        };
        return Err(CliError::InvalidInput(format!(
            "{}: no top-level function `{function}` ({defined}); pass --function NAME; \
             nothing stored",
            file.display()
        )));
    }
    Ok(())
}

/// The files a push stores, with their workflow names: `file` itself, or every `.py`
/// file directly in it when it is a directory (sorted, named after the file).
fn workflow_files(file: &Path, name: Option<String>) -> Result<Vec<(PathBuf, String)>, CliError> {
    let stem = |f: &Path| {
        f.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if !file.is_dir() {
        let name = name.unwrap_or_else(|| stem(file));
        if name.is_empty() {
            return Err(CliError::InvalidInput(format!(
                "cannot name a workflow after {}: give --name",
                file.display()
            )));
        }
        return Ok(vec![(file.to_path_buf(), name)]);
    }
    if name.is_some() {
        return Err(CliError::InvalidInput(
            "--name names one workflow; a directory's workflows are named after their files".into(),
        ));
    }
    let entries = std::fs::read_dir(file).map_err(|source| CliError::Read {
        what: "directory",
        path: file.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "py"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CliError::InvalidInput(format!(
            "no .py files in {}",
            file.display()
        )));
    }
    Ok(files
        .into_iter()
        .map(|f| {
            let name = stem(&f);
            (f, name)
        })
        .collect())
}
