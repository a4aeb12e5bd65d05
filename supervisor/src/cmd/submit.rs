//! `warden submit WORKFLOW`: adds one execution request to the stream; with `--wait`,
//! follows it: its logs as they are produced, then its result. Exit code (with
//! `--wait`): 0 success, 1 failed, 3 timeout, 4 crashed, 5 cancelled.

use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value};

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::intake::{ExecutionRequest, WaitEvent, WorkflowRef};
use crate::outcome::ExecutionId;

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
    /// Deadline for this execution (default: the workflow's, else the supervisor's).
    #[arg(long, value_parser = crate::args::parse_duration)]
    pub timeout: Option<Duration>,
    /// Execution id (default: a new UUID). Resubmitting an id never runs it twice.
    #[arg(long)]
    pub id: Option<String>,
    /// Wait for the result, streaming the logs.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (the execution goes on).
    #[arg(long, default_value = "1h", value_parser = crate::args::parse_duration)]
    pub wait_timeout: Duration,
    #[command(flatten)]
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
    req.validate()
        .map_err(|r| CliError::InvalidInput(r.reason))?;
    let client = args.conn.intake().await?;
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
    loop {
        match waiter.next().await? {
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
    use super::params_json;

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
