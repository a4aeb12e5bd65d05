//! `warden submit WORKFLOW`: adds one execution request to the stream; with `--wait`,
//! follows it: its logs as they are produced, then its result. Exit code (with
//! `--wait`): 0 success, 1 failed, 3 timeout, 4 crashed, 5 cancelled; Ctrl-C stops
//! waiting (the execution goes on; it says how to follow or cancel it), 130.
//!
//! Before submitting it checks, in PostgreSQL, that the workflow exists where the
//! request looks for it (the organization given, or the global workflows without
//! `--org`), and when it does not but the name exists elsewhere, the error names where
//! and which flag to pass. A database it cannot reach only earns a warning: the
//! supervisor checks again when it reads the request (and records an unknown workflow),
//! and a host may be allowed to submit without seeing the database. It then warns, and
//! still submits, when no supervisor with a live heartbeat consumes the stream
//! (`crate::intake::liveness`): the request would wait there until one starts.

use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value};

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::intake::{ExecutionRequest, WaitEvent, WorkflowRef};
use crate::outcome::ExecutionId;
use crate::store::{StoreError, WorkflowKey};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The workflow's name (or numeric id).
    pub workflow: String,
    /// Parameters as a JSON object.
    #[arg(long, conflicts_with = "param")]
    pub params: Option<String>,
    /// One parameter, `key=value` (repeatable). The value is parsed as JSON when it can
    /// be (`n=3`, `flag=true`, `tags=["a"]`), else taken as a string.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub param: Vec<String>,
    /// The workflow's organization.
    #[arg(long)]
    pub org: Option<String>,
    /// Who asked (recorded with the execution).
    #[arg(long)]
    pub caller: Option<String>,
    /// The queue it waits in (`critical`, `bulk`, ...; default: `default`). A supervisor
    /// serves the queues given to its `serve --queues`, the first most urgently; within a
    /// queue, organizations take turns.
    #[arg(long, value_parser = crate::intake::lanes::parse_queue)]
    pub queue: Option<String>,
    /// Deadline for this execution (default: the workflow's, else the supervisor's).
    #[arg(long, value_parser = crate::args::parse_duration)]
    pub timeout: Option<Duration>,
    /// Retries for this execution instead of the workflow's policy's number (0: none).
    #[arg(long)]
    pub retries: Option<u32>,
    /// Start it this long from now (`10m`, `90s`): `scheduled` until then.
    #[arg(long = "in", value_name = "DURATION", value_parser = crate::args::parse_duration, conflicts_with = "at")]
    pub in_: Option<Duration>,
    /// Start it at this time, RFC 3339 with an offset (`2026-12-24T07:00:00+01:00`).
    #[arg(long, value_name = "TIME", value_parser = parse_at)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Execution id (default: a new UUID). Resubmitting an id never runs it twice.
    #[arg(long)]
    pub id: Option<String>,
    /// Wait for the result, streaming the logs.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (the execution goes on).
    #[arg(long, default_value = "1h", value_parser = crate::args::parse_duration)]
    pub wait_timeout: Duration,
    /// Set from the global connection flags (crate::args::ConnArgs).
    #[arg(skip)]
    pub conn: ConnArgs,
}

pub async fn run(args: SubmitArgs) -> Result<i32, CliError> {
    let params =
        params_json(args.params.as_deref(), &args.param).map_err(CliError::InvalidInput)?;
    let workflow = if !args.workflow.is_empty() && args.workflow.bytes().all(|b| b.is_ascii_digit())
    {
        WorkflowRef::Id(
            args.workflow
                .parse()
                .map_err(|_| CliError::InvalidInput("workflow id is too large".into()))?,
        )
    } else {
        WorkflowRef::Name(args.workflow.clone())
    };
    let mut req = ExecutionRequest::new(
        args.id
            .clone()
            .map_or_else(ExecutionRequest::new_id, ExecutionId::from),
        workflow,
    );
    req.params_json = params;
    req.org = args.org.clone();
    req.caller = args.caller.clone();
    req.timeout = args.timeout;
    req.retries = args.retries;
    req.queue = args
        .queue
        .clone()
        .filter(|q| q != crate::intake::DEFAULT_QUEUE);
    req.not_before = match (args.in_, args.at) {
        (Some(d), _) => Some(
            chrono::Utc::now()
                + chrono::Duration::from_std(d)
                    .map_err(|_| CliError::InvalidInput("--in is too far ahead".into()))?,
        ),
        (None, at) => at,
    };
    req.validate()
        .map_err(|r| CliError::InvalidInput(r.reason))?;
    check_workflow(&args.conn, &req.workflow, args.org.as_deref()).await?;
    if args.id.is_some() {
        check_id_params(&args.conn, &req).await?;
    }
    let client = args.conn.intake().await?;
    match client.status().await {
        Ok(overview) if !overview.backlog.consumers.iter().any(|c| c.live) => eprintln!(
            "warning: no live supervisor is consuming `{}`; the execution waits there until \
             one runs (`warden serve`)",
            args.conn.keys().stream()
        ),
        // Supervisors that predate queues publish none: they serve the default queue.
        Ok(overview)
            if !overview.supervisors.is_empty()
                && !overview.supervisors.iter().any(|s| {
                    s.queues.iter().any(|q| q == req.queue_name())
                        || (s.queues.is_empty() && req.queue.is_none())
                }) =>
        {
            eprintln!(
                "warning: no live supervisor serves queue `{q}`; the execution waits until one \
                 does (`warden serve --queues {q},...`)",
                q = req.queue_name()
            )
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot tell whether a supervisor is running ({e})"),
    }
    // Subscribe before submitting, so nothing published in between is missed.
    let waiter = if args.wait {
        Some(
            client
                .wait_for_completion(req.execution_id.as_str(), args.wait_timeout)
                .await?,
        )
    } else {
        None
    };
    client.submit(&req).await?;
    let Some(mut waiter) = waiter else {
        println!("{}", req.execution_id);
        return Ok(0);
    };
    eprintln!("submitted {}", req.execution_id);
    let mut interrupts = super::logs::interrupts()?;
    loop {
        let event = tokio::select! {
            event = waiter.next() => event?,
            _ = interrupts.recv() => {
                super::logs::detached(req.execution_id.as_str());
                return Ok(super::logs::EXIT_INTERRUPTED);
            }
        };
        match event {
            Some(WaitEvent::Log(l)) => eprintln!("[{}] {}", l.level, l.message),
            Some(WaitEvent::Completed(c)) => {
                println!("{}", c.to_json());
                return Ok(c.status.exit_code());
            }
            None => {
                return Err(CliError::Stopped(
                    "the completion stream ended without a result",
                ))
            }
        }
    }
}

/// Fails when the id is already used by an execution with other params: a resubmission
/// must be the same request (then the first copy answers it), not another one. Only
/// warns when the database cannot be reached (the supervisor refuses it too, with an
/// `IdempotencyConflict` completion).
async fn check_id_params(conn: &ConnArgs, req: &ExecutionRequest) -> Result<(), CliError> {
    let stored = async {
        let store = conn.store().await?;
        let p = store.execution_params(req.execution_id.as_str()).await;
        store.close().await;
        p
    }
    .await;
    let stored = match stored {
        Ok(Some(Some(p))) => p,
        Ok(_) => return Ok(()),
        Err(e) => {
            eprintln!("warning: cannot check whether the id is in use ({e}); submitting anyway");
            return Ok(());
        }
    };
    let ours: Value = serde_json::from_str(&req.params_json).unwrap_or(Value::Null);
    if ours == stored {
        return Ok(());
    }
    Err(CliError::InvalidInput(format!(
        "execution id {} was already used with different params ({stored}); \
         resubmit it with the same params, or leave out --id for a new one",
        req.execution_id
    )))
}

/// Fails when `workflow` names no active workflow where the request looks for it,
/// naming the organizations (or the global scope) where the name does exist. Only warns
/// when the database cannot be reached (see the module comment).
async fn check_workflow(
    conn: &ConnArgs,
    workflow: &WorkflowRef,
    org: Option<&str>,
) -> Result<(), CliError> {
    let checked = async {
        let store = conn.store().await?;
        let key = match workflow {
            WorkflowRef::Id(id) => WorkflowKey::Id(*id),
            WorkflowRef::Name(name) => WorkflowKey::Name {
                org: org.map(str::to_string),
                name: name.clone(),
            },
        };
        let found = store
            .load_for_batch(std::slice::from_ref(&key))
            .await?
            .contains_key(&key);
        let elsewhere = match (found, workflow) {
            (false, WorkflowRef::Name(name)) => store
                .list_workflows()
                .await?
                .into_iter()
                .filter(|w| w.active && &w.name == name)
                .map(|w| w.org)
                .collect(),
            _ => Vec::new(),
        };
        store.close().await;
        Ok::<_, StoreError>((found, elsewhere))
    }
    .await;
    let (found, elsewhere) = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warning: cannot check that the workflow exists ({e}); submitting anyway");
            return Ok(());
        }
    };
    if found {
        return Ok(());
    }
    let name = match workflow {
        WorkflowRef::Id(id) => {
            return Err(CliError::InvalidInput(format!(
                "there is no workflow with id {id}; `warden workflow list` shows them"
            )))
        }
        WorkflowRef::Name(name) => name,
    };
    Err(CliError::InvalidInput(missing_workflow(
        name, org, &elsewhere,
    )))
}

/// The error for a workflow `name` not found in `org` (globally when `None`), given the
/// scopes where the name does exist (`None`: global).
fn missing_workflow(name: &str, org: Option<&str>, elsewhere: &[Option<String>]) -> String {
    let here = match org {
        Some(o) => format!("workflow {name} does not exist in organization {o}"),
        None => format!("workflow {name} does not exist globally"),
    };
    let orgs: Vec<&str> = elsewhere.iter().filter_map(|o| o.as_deref()).collect();
    let global = elsewhere.iter().any(Option::is_none);
    let mut hints = Vec::new();
    match orgs.as_slice() {
        [] => {}
        [one] => hints.push(format!("it exists in organization {one}: pass --org {one}")),
        many => hints.push(format!(
            "it exists in organizations {}: pass --org with one of them",
            many.join(", ")
        )),
    }
    if global {
        hints.push("it exists globally: leave out --org".to_string());
    }
    if hints.is_empty() {
        format!("{here} (nor anywhere else); `warden workflow push` stores it")
    } else {
        format!("{here}; {}", hints.join("; "))
    }
}

/// `--at`: RFC 3339 with an offset.
fn parse_at(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            format!("`{text}` is not an RFC 3339 time with an offset ({e}); e.g. 2026-12-24T07:00:00+01:00")
        })
}

/// `--params` or the `--param k=v` pairs, as one JSON object.
pub fn params_json(params: Option<&str>, pairs: &[String]) -> Result<String, String> {
    if let Some(p) = params {
        return match serde_json::from_str::<Value>(p) {
            Ok(Value::Object(_)) => Ok(p.to_string()),
            Ok(_) => Err("--params must be a JSON object such as '{\"x\": 1}'".into()),
            Err(e) => Err(format!(
                "--params is not valid JSON ({e}); pass an object such as '{{\"x\": 1}}'"
            )),
        };
    }
    let mut obj = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("--param `{pair}` is not KEY=VALUE"))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        obj.insert(k.to_string(), value);
    }
    Ok(Value::Object(obj).to_string())
}

#[cfg(test)]
mod tests {
    use super::{missing_workflow, params_json};

    #[test]
    fn a_missing_workflow_names_where_it_exists() {
        assert_eq!(
            missing_workflow("x", None, &[Some("acme".into())]),
            "workflow x does not exist globally; it exists in organization acme: pass --org acme"
        );
        assert_eq!(
            missing_workflow(
                "x",
                Some("beta"),
                &[None, Some("acme".into()), Some("c".into())]
            ),
            "workflow x does not exist in organization beta; it exists in organizations acme, c: \
             pass --org with one of them; it exists globally: leave out --org"
        );
        assert_eq!(
            missing_workflow("x", None, &[]),
            "workflow x does not exist globally (nor anywhere else); `warden workflow push` stores it"
        );
    }

    #[test]
    fn params_from_pairs_parse_json_values() {
        let p = params_json(
            None,
            &["n=3".into(), "name=bob".into(), "tags=[\"a\"]".into()],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v, serde_json::json!({"n": 3, "name": "bob", "tags": ["a"]}));
        assert!(params_json(None, &["novalue".into()]).is_err());
        assert!(params_json(Some("[1]"), &[]).is_err());
    }
}
