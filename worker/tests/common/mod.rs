//! Test harness: runs the real `warden-worker` binary with one end of a socketpair on
//! fd 3, plays the supervisor's side of the protocol, and inspects the worker's
//! processes through `/proc`. No mocks: every test talks to real processes.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use warden_protocol::frame::DEFAULT_MAX_FRAME;
use warden_protocol::{
    io as frame_io, Ended, ErrorInfo, Execute, ExecutionLimits, ExecutionResult, ExitKind,
    FromWorker, Hello, Log, LogLevel, Outcome, Reply, ReplyOutcome, Request, Started, ToWorker,
    Welcome, PROTOCOL_VERSION,
};

pub mod redis_cache;

pub const BIN: &str = env!("CARGO_BIN_EXE_warden-worker");

/// How long any single message may take before a test fails instead of hanging.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Options {
    pub isolation: &'static str,
    pub worker_id: u64,
    /// Run the worker under this uid/gid (the tests run as root, and RLIMIT_NPROC does
    /// not apply to root).
    pub uid: Option<u32>,
    pub max_frame: Option<usize>,
    /// `--redis-url` and `--key-prefix` (the module cache).
    pub redis: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            isolation: "fork",
            worker_id: 1,
            uid: None,
            max_frame: None,
            redis: None,
        }
    }
}

/// A worker process that has not said Hello yet.
pub struct Spawned {
    pub child: Child,
    pub conn: UnixStream,
    pub spawned_at: Instant,
}

/// Starts the worker with its connection on fd 3. Set `WARDEN_TEST_WRAP` to run it under
/// a tool, e.g. `WARDEN_TEST_WRAP="strace -f -tt -o /tmp/worker.strace"`.
pub fn spawn(opts: &Options) -> Spawned {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let fd = theirs.as_raw_fd();
    let mut cmd = match std::env::var("WARDEN_TEST_WRAP") {
        Ok(wrap) => {
            let mut words = wrap.split_whitespace();
            let mut c = Command::new(words.next().unwrap());
            c.args(words).arg(BIN);
            c
        }
        Err(_) => Command::new(BIN),
    };
    cmd.arg("--worker-id")
        .arg(opts.worker_id.to_string())
        .arg("--isolation")
        .arg(opts.isolation)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/tmp")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(max) = opts.max_frame {
        cmd.arg("--max-frame").arg(max.to_string());
    }
    if let Some((url, prefix)) = &opts.redis {
        cmd.arg("--redis-url")
            .arg(url)
            .arg("--key-prefix")
            .arg(prefix);
    }
    if let Some(uid) = opts.uid {
        cmd.uid(uid).gid(uid);
        // The default scratch root (`/tmp/scratch`) belongs to whichever test's worker
        // made it first, often root's: a worker of another uid gets a root of its own.
        let scratch = format!("/tmp/warden-test-scratch-{uid}");
        std::fs::create_dir_all(&scratch).expect("scratch root");
        std::os::unix::fs::chown(&scratch, Some(uid), Some(uid)).expect("chown scratch root");
        cmd.arg("--scratch-dir").arg(scratch);
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself would keep close-on-exec set.
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned_at = Instant::now();
    let child = cmd.spawn().expect("spawn warden-worker");
    drop(theirs);
    ours.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    Spawned {
        child,
        conn: ours,
        spawned_at,
    }
}

/// A worker that has been welcomed and is waiting for work.
pub struct Worker {
    pub child: Option<Child>,
    pub conn: UnixStream,
    pub hello: Hello,
    /// Time from `spawn` to the Hello frame.
    pub spawn_to_hello: Duration,
    max_frame: usize,
}

impl Worker {
    pub fn start() -> Worker {
        Worker::start_with(&Options::default())
    }

    pub fn start_reuse() -> Worker {
        Worker::start_with(&Options {
            isolation: "reuse",
            ..Options::default()
        })
    }

    pub fn start_with(opts: &Options) -> Worker {
        let Spawned {
            child,
            mut conn,
            spawned_at,
        } = spawn(opts);
        let max_frame = opts.max_frame.unwrap_or(DEFAULT_MAX_FRAME);
        let hello = match frame_io::read::<FromWorker, _>(&mut conn, max_frame) {
            Ok(Some(FromWorker::Hello(h))) => h,
            other => {
                let stderr = stderr_of(child);
                panic!("expected Hello, got {other:?}; worker stderr:\n{stderr}")
            }
        };
        let spawn_to_hello = spawned_at.elapsed();
        frame_io::write(
            &mut conn,
            &ToWorker::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                accepted: true,
                reason: None,
            }),
            max_frame,
        )
        .unwrap();
        Worker {
            child: Some(child),
            conn,
            hello,
            spawn_to_hello,
            max_frame,
        }
    }

    pub fn pid(&self) -> i32 {
        self.hello.pid as i32
    }

    pub fn send(&mut self, msg: &ToWorker) {
        frame_io::write(&mut self.conn, msg, self.max_frame).expect("send to worker");
    }

    pub fn recv(&mut self) -> FromWorker {
        match frame_io::read::<FromWorker, _>(&mut self.conn, self.max_frame) {
            Ok(Some(msg)) => msg,
            other => {
                let stderr = self.child.take().map(stderr_of).unwrap_or_default();
                panic!("expected a message from the worker, got {other:?}; stderr:\n{stderr}")
            }
        }
    }

    /// Sends Execute and collects everything up to and including its Ended.
    pub fn execute(&mut self, e: Execute) -> Run {
        let id = e.execution_id.clone();
        self.send(&ToWorker::Execute(e));
        self.collect(&id)
    }

    /// Sends Execute and waits for Started, leaving the rest to [`Worker::collect`].
    pub fn start_execution(&mut self, e: Execute) -> Started {
        self.send(&ToWorker::Execute(e));
        match self.recv() {
            FromWorker::Started(s) => s,
            other => panic!("expected Started, got {other:?}"),
        }
    }

    /// Collects messages up to and including the Ended of `id`; a Request fails the test.
    pub fn collect(&mut self, id: &str) -> Run {
        self.collect_answering(id, |req| panic!("unexpected Request {req:?}"))
    }

    /// Sends Execute and collects everything up to its Ended, answering each Request with
    /// what `answer` returns.
    pub fn execute_answering(
        &mut self,
        e: Execute,
        answer: impl FnMut(&Request) -> ReplyOutcome,
    ) -> Run {
        let id = e.execution_id.clone();
        self.send(&ToWorker::Execute(e));
        self.collect_answering(&id, answer)
    }

    /// Like [`Worker::collect`], answering Requests with `answer`.
    pub fn collect_answering(
        &mut self,
        id: &str,
        mut answer: impl FnMut(&Request) -> ReplyOutcome,
    ) -> Run {
        let mut run = Run::default();
        loop {
            let msg = self.recv();
            run.kinds.push(msg.kind());
            match msg {
                FromWorker::Started(s) => {
                    assert_eq!(s.execution_id, id);
                    run.started = Some(s);
                }
                FromWorker::Log(l) => {
                    assert_eq!(l.execution_id, id);
                    run.logs.push(l);
                }
                FromWorker::Result(r) => {
                    assert_eq!(r.execution_id, id);
                    assert!(run.result.is_none(), "two Results for {id}");
                    run.result = Some(r);
                }
                FromWorker::Ended(e) => {
                    assert_eq!(e.execution_id, id);
                    run.ended = Some(e);
                    return run;
                }
                FromWorker::Hello(h) => panic!("unexpected Hello {h:?}"),
                FromWorker::Compiled(_) => panic!("a child's Compiled frame was relayed"),
                FromWorker::Request(r) => {
                    assert_eq!(r.execution_id, id);
                    let outcome = answer(&r);
                    self.send(&ToWorker::Reply(Reply {
                        execution_id: r.execution_id.clone(),
                        request_id: r.request_id,
                        outcome,
                    }));
                    run.requests.push(r);
                }
            }
        }
    }

    /// Waits for the worker process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("worker already reaped");
        wait_with_timeout(child, within)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn wait_with_timeout(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn stderr_of(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut out = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut out);
    }
    out
}

/// Everything one execution produced, in order.
#[derive(Debug, Default)]
pub struct Run {
    pub kinds: Vec<&'static str>,
    pub started: Option<Started>,
    pub logs: Vec<Log>,
    pub result: Option<ExecutionResult>,
    pub ended: Option<Ended>,
    /// Requests the execution made, in order (each was answered).
    pub requests: Vec<Request>,
}

impl Run {
    pub fn ended(&self) -> &Ended {
        self.ended.as_ref().expect("no Ended")
    }

    pub fn exit(&self) -> &ExitKind {
        &self.ended().exit
    }

    /// The successful result, parsed; panics with the failure otherwise.
    pub fn value(&self) -> serde_json::Value {
        match &self.result.as_ref().expect("no Result").outcome {
            Outcome::Success { result_json } => serde_json::from_str(result_json).unwrap(),
            Outcome::Failed(info) => panic!("execution failed: {info:#?}\nlogs: {:#?}", self.logs),
        }
    }

    /// The failure; panics if the execution succeeded.
    pub fn failure(&self) -> &ErrorInfo {
        match &self.result.as_ref().expect("no Result").outcome {
            Outcome::Failed(info) => info,
            Outcome::Success { result_json } => panic!("execution succeeded with {result_json}"),
        }
    }

    pub fn lines(&self) -> Vec<(LogLevel, String)> {
        self.logs
            .iter()
            .map(|l| (l.level, l.message.clone()))
            .collect()
    }
}

/// An Execute for `run()` in `flows/test.py` with no params and default limits.
pub fn exec(id: &str, source: &str) -> Execute {
    Execute {
        execution_id: id.to_string(),
        path: "flows/test.py".to_string(),
        source: source.to_string(),
        function: "run".to_string(),
        params_json: "{}".to_string(),
        context_json: "{}".to_string(),
        modules_generation: 0,
        modules_manifest: 0,
        limits: ExecutionLimits::default(),
        org: String::new(),
        code: Default::default(),
    }
}

pub fn with_params(mut e: Execute, params_json: &str) -> Execute {
    e.params_json = params_json.to_string();
    e
}

pub fn with_limits(mut e: Execute, f: impl FnOnce(&mut ExecutionLimits)) -> Execute {
    f(&mut e.limits);
    e
}

pub fn ok_reply(value_json: &str) -> ReplyOutcome {
    ReplyOutcome::Ok {
        value_json: value_json.to_string(),
    }
}

/// A trivial function that succeeds: used after crashes to show the template survived.
pub fn trivial(id: &str) -> Execute {
    exec(id, "def run():\n    return 'ok'\n")
}

pub fn assert_trivial_succeeds(w: &mut Worker, id: &str) {
    let run = w.execute(trivial(id));
    assert_eq!(run.value(), serde_json::json!("ok"), "{run:#?}");
    assert!(matches!(run.exit(), ExitKind::Exited(0)), "{run:#?}");
}

// --- /proc inspection ---------------------------------------------------------------

/// Children (live or zombie) of `pid`, from every thread's `children` file.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = fs::read_to_string(task.path().join("children")) {
                out.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

/// `(pid, ppid, pgrp, state)` of every process.
pub fn all_processes() -> Vec<(i32, i32, i32, char)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.len() < 3 {
            continue;
        }
        let state = fields[0].chars().next().unwrap_or('?');
        let ppid = fields[1].parse().unwrap_or(0);
        let pgrp = fields[2].parse().unwrap_or(0);
        out.push((pid, ppid, pgrp, state));
    }
    out
}

pub fn members_of_group(pgid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|&(_, _, pgrp, _)| pgrp == pgid)
        .map(|(pid, ..)| pid)
        .collect()
}

pub fn zombie_children_of(pid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|&(_, ppid, _, state)| ppid == pid && state == 'Z')
        .map(|(pid, ..)| pid)
        .collect()
}

pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Between executions a fork-mode template has exactly one child, alive: the spare it
/// forked for its next execution. Waits up to 5 s for the spare forked after the last
/// `Ended` (anything else left over, a zombie or an escapee, fails it) and returns its
/// pid.
pub fn spare_of(template: i32) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let kids = children_of(template);
        if let [only] = kids[..] {
            if is_alive(only) {
                return only;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "template {template} should have only its spare as a child, has {kids:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The template's descriptors while idle with its spare forked (the spare's socket and
/// pidfd are opened just after the fork, so this waits for the count to hold still).
pub fn idle_fd_count(template: i32) -> usize {
    spare_of(template);
    let mut last = fd_count(template);
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let now = fd_count(template);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

pub fn is_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

pub fn exists(pid: i32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// Polls `cond` until it holds or `within` passes; returns whether it held.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
