//! `warden exec FILE`: one workflow through a one-worker pool, no services needed.
//! Logs stream to stderr as they arrive; the result goes to stdout (or one JSON
//! object with `--json`). Ctrl-C cancels the execution; a second Ctrl-C kills it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::args::PoolArgs;
use crate::cli_error::CliError;
use crate::outcome::{ExecutionId, ExecutionOutcome, Job, PoolEvent, Status};
use crate::pool::Pool;

/// The flags of `warden exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The workflow's Python file.
    pub file: PathBuf,
    /// The function to call.
    #[arg(long, short = 'f', default_value = "run")]
    pub function: String,
    /// Parameters as a JSON object; its keys become keyword arguments.
    #[arg(long, short = 'p', default_value = "{}")]
    pub params: String,
    /// Print one JSON object (status, result, error, logs, resources) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pool: PoolArgs,
}

/// Runs `warden exec`: the exit code follows the execution's end
/// ([`Status::exit_code`]); `Err` is a user mistake or a pool that could not start.
pub async fn run(args: ExecArgs) -> Result<i32, CliError> {
    let source = std::fs::read_to_string(&args.file).map_err(|source| CliError::Read {
        what: "workflow file",
        path: args.file.clone(),
        source,
    })?;
    check_params(&args.params).map_err(CliError::InvalidInput)?;
    let (run_dir, _guard) = args.pool.run_dir().map_err(|source| CliError::Local {
        what: "create a run directory",
        source,
    })?;
    let mut cfg = args.pool.to_config(run_dir);
    cfg.workers = 1;
    let timeout = cfg.timeout;
    let (tx, mut events) = mpsc::unbounded_channel();
    let pool = Pool::start(cfg, tx).await?;

    let id = ExecutionId::from(format!("exec-{}", std::process::id()));
    pool.submit(Job {
        execution_id: id.clone(),
        path: args.file.display().to_string(),
        source,
        function: args.function.clone(),
        params_json: args.params.clone(),
        context_json: "{}".into(),
        timeout,
        limits: None,
        modules_generation: 0,
        org: None,
        modules_manifest: None,
        priority: 0,
    })
    .map_err(|_| CliError::Stopped("the worker pool stopped before it could run the workflow"))?;

    let mut logs = Vec::new();
    let mut interrupts = 0;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| CliError::Local {
            what: "install the SIGTERM handler",
            source,
        })?;
    let outcome = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(PoolEvent::Log(l)) => {
                    if !args.json {
                        eprintln!("[{}] {}", l.level.as_str(), l.message);
                    }
                    logs.push(json!({"level": l.level.as_str(), "message": l.message}));
                }
                Some(PoolEvent::Finished(o) | PoolEvent::Interrupted(o)) => break o,
                Some(PoolEvent::Returned { .. }) => {
                    return Err(CliError::Stopped(
                        "the worker pool stopped before it started the workflow",
                    ))
                }
                Some(PoolEvent::Started { .. }) => {}
                // No services here: nothing can answer (module cache, SDK reads).
                Some(PoolEvent::Request(req)) => pool.reply(crate::pool::unavailable(
                    &req,
                    "`warden exec` runs without PostgreSQL and Redis",
                )),
                None => return Err(CliError::Stopped("the worker pool stopped unexpectedly")),
            },
            _ = interrupted(&mut term) => {
                interrupts += 1;
                if interrupts == 1 {
                    eprintln!("interrupted: cancelling (interrupt again to stop at once)");
                    pool.cancel(&id);
                } else {
                    pool.shutdown(Duration::ZERO).await;
                }
            }
        }
    };
    pool.shutdown(Duration::from_secs(1)).await;

    if args.json {
        println!("{}", to_json(&outcome, logs));
    } else {
        print_human(&outcome);
    }
    Ok(outcome.status.exit_code())
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn interrupted(term: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `Err` is the sentence saying what is wrong with `--params`.
fn check_params(params: &str) -> Result<(), String> {
    match serde_json::from_str::<Value>(params) {
        Ok(Value::Object(_)) => Ok(()),
        Ok(other) => Err(format!(
            "--params must be a JSON object such as '{{\"x\": 1}}', not {}",
            kind(&other)
        )),
        Err(e) => Err(format!(
            "--params is not valid JSON ({e}); pass an object such as '{{\"x\": 1}}'"
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `--json` document: every field is always present (null when not applicable).
pub fn to_json(o: &ExecutionOutcome, logs: Vec<Value>) -> Value {
    let result = o
        .result_json
        .as_deref()
        .map(|r| serde_json::from_str::<Value>(r).unwrap_or(Value::String(r.to_string())));
    json!({
        "execution_id": o.execution_id,
        "status": o.status,
        "result": result,
        "error_type": o.error.as_ref().map(|e| &e.error_type),
        "error_message": o.error.as_ref().map(|e| &e.message),
        "traceback": o.error.as_ref().map(|e| &e.traceback).filter(|t| !t.is_empty()),
        "duration_ms": o.duration.as_secs_f64() * 1000.0,
        "peak_memory_bytes": o.peak_memory_bytes,
        "cpu_seconds": o.cpu_seconds,
        "exit_code": o.exit_code,
        "exit_signal": o.exit_signal,
        "logs": logs,
        "logs_dropped": o.logs_dropped,
    })
}

fn print_human(o: &ExecutionOutcome) {
    match o.status {
        Status::Success => {
            let pretty = o
                .result_json
                .as_deref()
                .and_then(|r| serde_json::from_str::<Value>(r).ok())
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_default();
            println!("{pretty}");
        }
        _ => {
            if let Some(e) = &o.error {
                if !e.traceback.is_empty() {
                    eprint!("{}", e.traceback);
                    if !e.traceback.ends_with('\n') {
                        eprintln!();
                    }
                }
                eprintln!("{}: {}: {}", o.status, e.error_type, e.message);
            } else {
                eprintln!("{}", o.status);
            }
        }
    }
    eprintln!(
        "{} in {:.1} ms, peak memory {}, CPU {:.3} s",
        o.status,
        o.duration.as_secs_f64() * 1000.0,
        crate::size::show(o.peak_memory_bytes),
        o.cpu_seconds
    );
}
