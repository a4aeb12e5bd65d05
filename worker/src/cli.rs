//! The command line, parsed by hand (a handful of flags do not justify clap's start-up
//! cost in a process whose spawn-to-Hello budget is ~15 ms):
//!
//! `warden-worker --worker-id <u64> --isolation fork|reuse [--max-frame <bytes>]
//!  [--redis-url <url> [--key-prefix <prefix>]] [--scratch-dir <dir>] [--private-tmp]`
//!
//! `--redis-url` (or, as the supervisor passes it, the environment variable
//! `WARDEN_REDIS_URL`, which the template removes from its environment before any child
//! exists: a command line is world-readable in `/proc`) is where the module cache is
//! (read only; never a database). Without it the import hook is installed but serves
//! nothing.
//!
//! Both `--flag value` and `--flag=value` are accepted. `--isolation` defaults to `fork`.

use warden_protocol::frame::{DEFAULT_MAX_FRAME, HARD_MAX_FRAME};
use warden_protocol::Isolation;

pub const USAGE: &str =
    "usage: warden-worker --worker-id <u64> --isolation fork|reuse [--max-frame <bytes>]\n\
     \x20      [--redis-url <url> [--key-prefix <prefix>]] [--scratch-dir <dir>] [--private-tmp]\n\
     The supervisor connection must be open on fd 3.";

/// The environment variable the supervisor passes the module cache's URL in.
pub const REDIS_URL_ENV: &str = "WARDEN_REDIS_URL";

/// Smallest accepted `--max-frame`: a frame must hold at least a truncated log line.
pub const MIN_MAX_FRAME: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub worker_id: u64,
    pub isolation: Isolation,
    pub max_frame: usize,
    /// The module cache's Redis, if there is one.
    pub redis_url: Option<String>,
    /// Prefix of the module cache's keys (empty in production).
    pub key_prefix: String,
    /// Where each child makes its own working directory (default: `scratch` under the
    /// current directory).
    pub scratch_dir: Option<std::path::PathBuf>,
    /// `/tmp`, `/var/tmp` and `/dev/shm` are this template's own (the supervisor mounted
    /// them): empty them after every execution.
    pub private_tmp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Args),
    Help,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut worker_id = None;
    let mut isolation = Isolation::Fork;
    let mut max_frame = DEFAULT_MAX_FRAME;
    let mut redis_url = None;
    let mut key_prefix = String::new();
    let mut scratch_dir = None;
    let mut private_tmp = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--worker-id" => {
                let v = value("--worker-id")?;
                worker_id =
                    Some(v.parse::<u64>().map_err(|_| {
                        format!("--worker-id must be an unsigned integer, got {v:?}")
                    })?);
            }
            "--isolation" => {
                isolation = match value("--isolation")?.as_str() {
                    "fork" => Isolation::Fork,
                    "reuse" => Isolation::Reuse,
                    other => {
                        return Err(format!("--isolation must be fork or reuse, got {other:?}"))
                    }
                }
            }
            "--max-frame" => {
                let v = value("--max-frame")?;
                let n = v
                    .parse::<usize>()
                    .map_err(|_| format!("--max-frame must be a byte count, got {v:?}"))?;
                if !(MIN_MAX_FRAME..=HARD_MAX_FRAME).contains(&n) {
                    return Err(format!(
                        "--max-frame must be between {MIN_MAX_FRAME} and {HARD_MAX_FRAME} bytes, got {n}"
                    ));
                }
                max_frame = n;
            }
            "--redis-url" => {
                let v = value("--redis-url")?;
                if v.is_empty() {
                    return Err("--redis-url must not be empty".into());
                }
                redis_url = Some(v);
            }
            "--key-prefix" => key_prefix = value("--key-prefix")?,
            "--scratch-dir" => scratch_dir = Some(value("--scratch-dir")?.into()),
            "--private-tmp" => private_tmp = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let worker_id = worker_id.ok_or("--worker-id is required")?;
    Ok(Command::Run(Args {
        worker_id,
        isolation,
        max_frame,
        redis_url,
        key_prefix,
        scratch_dir,
        private_tmp,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_every_flag_in_both_spellings() {
        let want = Command::Run(Args {
            worker_id: 7,
            isolation: Isolation::Reuse,
            max_frame: 65536,
            redis_url: Some("redis://h:1".into()),
            key_prefix: "t:1:".into(),
            scratch_dir: None,
            private_tmp: false,
        });
        assert_eq!(
            run(&[
                "--worker-id",
                "7",
                "--isolation",
                "reuse",
                "--max-frame",
                "65536",
                "--redis-url",
                "redis://h:1",
                "--key-prefix",
                "t:1:"
            ]),
            Ok(want.clone())
        );
        assert_eq!(
            run(&[
                "--worker-id=7",
                "--isolation=reuse",
                "--max-frame=65536",
                "--redis-url=redis://h:1",
                "--key-prefix=t:1:"
            ]),
            Ok(want)
        );
    }

    #[test]
    fn isolation_and_max_frame_have_defaults() {
        assert_eq!(
            run(&["--worker-id", "1"]),
            Ok(Command::Run(Args {
                worker_id: 1,
                isolation: Isolation::Fork,
                max_frame: DEFAULT_MAX_FRAME,
                redis_url: None,
                key_prefix: String::new(),
                scratch_dir: None,
                private_tmp: false,
            }))
        );
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(run(&[]).unwrap_err().contains("--worker-id is required"));
        assert!(run(&["--worker-id", "x"]).unwrap_err().contains("unsigned"));
        assert!(run(&["--worker-id", "1", "--isolation", "thread"])
            .unwrap_err()
            .contains("fork or reuse"));
        assert!(run(&["--worker-id", "1", "--max-frame", "10"])
            .unwrap_err()
            .contains("between"));
        assert!(run(&["--worker-id"]).unwrap_err().contains("needs a value"));
        assert!(run(&["--bogus"]).unwrap_err().contains("unknown argument"));
        assert!(run(&["--worker-id", "1", "--redis-url", ""])
            .unwrap_err()
            .contains("must not be empty"));
    }
}
