//! `warden-worker`: one sandboxed worker template of the Warden supervisor.
//!
//! The supervisor starts it with its connection already open on fd 3 (a socketpair) and
//! `--worker-id <u64> --isolation fork|reuse [--max-frame <bytes>] [--redis-url <url>
//! [--key-prefix <prefix>]]`. The process embeds
//! CPython once, says Hello, then runs executions one at a time until told to stop.
//!
//! Layout:
//! - [`cli`]: the command line.
//! - [`template`]: start-up, the handshake and the message loop (one execution at a time).
//! - [`connection`]: the supervisor connection on fd 3 (blocking frame I/O).
//! - [`forked`]: fork-mode executions as the template sees them: fork, watch, report.
//! - [`child`]: what a forked child does before and after the user's function.
//! - [`sandbox`]: process-level isolation applied in the child (group, parent death,
//!   file descriptors, rlimits) and the template's clean signal state.
//! - [`seccomp`]: the system calls a child (or a reuse template) may not make.
//! - [`std_output`]: a child's fds 1 and 2, collected into its execution's logs.
//! - [`relay`]: validation and forwarding of a child's frames.
//! - [`code_cache`]: compiled code a fork-mode template hands down, one organization's
//!   at a time.
//! - [`request`]: one blocking Request/Reply exchange with the supervisor (the child's
//!   socket in fork mode, fd 3 in reuse mode).
//! - [`modules`]: the workspace module cache: the Rust import hook serving a snapshot
//!   of Redis, and the template's loading of it.
//! - [`reap`]: waiting for children, their resource usage, and killing leftovers.
//! - [`reuse`]: reuse-mode executions, run by the template itself.
//! - [`python`]: the embedded interpreter, output capture and the Python runner.
//! - [`wipe`]: zeroing an execution's bytes in the template once used, so that no later
//!   child inherits them.
//! - [`procfs`], [`fds`]: small Linux helpers.
//! - [`error`]: the worker's error type and its exit codes.
//!
//! Single-threaded and without an async runtime on purpose: `fork` is only safe when no
//! other thread can hold a lock, and `RLIMIT_AS` stays meaningful without per-thread
//! malloc arenas.

mod child;
mod cli;
mod code_cache;
mod connection;
mod error;
mod fds;
mod forked;
mod modules;
mod procfs;
mod python;
mod reap;
mod relay;
mod request;
mod reuse;
mod sandbox;
mod seccomp;
mod std_output;
mod template;
mod wipe;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Command::Run(mut args)) => {
            // The module cache's URL comes in the environment (a command line is
            // world-readable) and leaves it at once, before any child could inherit it.
            if let Some(url) = std::env::var_os(cli::REDIS_URL_ENV) {
                std::env::remove_var(cli::REDIS_URL_ENV);
                if args.redis_url.is_none() && !url.is_empty() {
                    args.redis_url = Some(url.to_string_lossy().into_owned());
                }
            }
            args
        }
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let e = error::WorkerError::Usage(e);
            eprintln!("warden-worker: {e}\n{}", cli::USAGE);
            return ExitCode::from(e.exit_code());
        }
    };
    match template::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden-worker {}: {e}", args.worker_id);
            ExitCode::from(e.exit_code())
        }
    }
}
