//! Hostile workflows against the sandbox's process boundary: each test runs what an
//! attacker's workflow would run and asserts that it fails, and that the slot still
//! serves the next execution correctly afterwards.
//!
//! The attacks report what each system call returned (an errno, or "ok") as their
//! result, so a failure names exactly which attack got through.

use serde_json::Value;
use warden::outcome::Status;
use warden_protocol::Isolation;
use warden_tests::pool::{alive, TestPool};

/// Python helpers shared by the attacks: `attempt(fn)` returns "ok" or the errno.
const PRELUDE: &str = r#"import ctypes, os, signal, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return e.errno
def sys(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == -1:
        raise OSError(ctypes.get_errno(), "syscall %d" % nr)
    return r
"#;

/// Runs `body` (the inside of `def run():`, indented by four spaces) after [`PRELUDE`].
async fn attack(p: &mut TestPool, id: &str, body: &str) -> serde_json::Map<String, Value> {
    let src = format!("{PRELUDE}def run():\n{body}");
    let f = p.run(id, &src, "{}").await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    let v: Value = serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
    v.as_object().expect("a dict of results").clone()
}

/// Every entry of `results` is an errno (the attack failed), none is "ok".
fn all_refused(results: &serde_json::Map<String, Value>) {
    let through: Vec<_> = results
        .iter()
        .filter(|(_, v)| v.as_str() == Some("ok"))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        through.is_empty(),
        "attacks that got through: {through:?} in {results:?}"
    );
    assert!(!results.is_empty());
}

#[tokio::test]
async fn a_child_cannot_trace_read_or_signal_its_template() {
    let mut p = TestPool::start(|_| {}).await;
    let body = r#"    t = os.getppid()
    def mem_read():
        with open("/proc/%d/mem" % t, "rb") as f:
            f.seek(0x400000); f.read(16)
    def mem_write():
        with open("/proc/%d/mem" % t, "r+b") as f:
            f.seek(0x400000); f.write(b"x")
    def environ():
        open("/proc/%d/environ" % t, "rb").read()
    def fds():
        os.listdir("/proc/%d/fd" % t)
    def getfd():
        pidfd = sys(434, t, 0)           # pidfd_open
        sys(438, pidfd, 3, 0)            # pidfd_getfd: the template's supervisor socket
    def getfd_via_proc():
        pidfd = os.open("/proc/%d" % t, os.O_RDONLY | os.O_DIRECTORY)
        sys(438, pidfd, 3, 0)
    def signal_via_proc():
        pidfd = os.open("/proc/%d" % t, os.O_RDONLY | os.O_DIRECTORY)
        sys(424, pidfd, signal.SIGSTOP, 0, 0)   # pidfd_send_signal
    def vm_read():
        buf = ctypes.create_string_buffer(16)
        local = struct.pack("QQ", ctypes.addressof(buf), 16)
        remote = struct.pack("QQ", 0x400000, 16)
        lb = ctypes.create_string_buffer(local); rb = ctypes.create_string_buffer(remote)
        sys(310, t, ctypes.addressof(lb), 1, ctypes.addressof(rb), 1, 0)
    return {
        "template": t,
        "ptrace_attach": attempt(lambda: sys(101, 16, t, 0, 0)),
        "ptrace_seize": attempt(lambda: sys(101, 0x4206, t, 0, 0)),
        "proc_mem_read": attempt(mem_read),
        "proc_mem_write": attempt(mem_write),
        "proc_environ": attempt(environ),
        "proc_fds": attempt(fds),
        "pidfd_getfd": attempt(getfd),
        "pidfd_getfd_via_proc": attempt(getfd_via_proc),
        "pidfd_send_signal": attempt(signal_via_proc),
        "process_vm_readv": attempt(vm_read),
        "kill_stop": attempt(lambda: os.kill(t, signal.SIGSTOP)),
        "kill_group": attempt(lambda: os.kill(-t, signal.SIGSTOP)),
        "kill_everyone": attempt(lambda: os.kill(-1, signal.SIGSTOP)),
        "tgkill": attempt(lambda: sys(234, t, t, signal.SIGKILL)),
        "tkill": attempt(lambda: sys(200, t, signal.SIGKILL)),
        "sigqueue": attempt(lambda: sys(129, t, signal.SIGKILL, 0)),
    }
"#;
    let results = attack(&mut p, "takeover", body).await;
    all_refused(&results);
    // The template is untouched: same process, alive, and it runs the next execution.
    let template = results["template"].as_u64().unwrap() as u32;
    assert!(alive(template));
    let f = p.run("after", "def run():\n    return 7\n", "{}").await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    assert_eq!(f.outcome.result_json.as_deref(), Some("7"));
    assert_eq!(
        p.pool.stats().templates_started,
        1,
        "the template was not replaced"
    );
}

/// Namespaces, mounts and the kernel interfaces exploits start from, in both modes.
#[tokio::test]
async fn namespaces_mounts_and_kernel_interfaces_are_denied() {
    let body = r#"    def clone_userns():
        pid = sys(56, 0x10000000 | 17, 0, 0, 0, 0)   # clone(CLONE_NEWUSER | SIGCHLD)
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return {
        "unshare_user": attempt(lambda: sys(272, 0x10000000)),
        "unshare_mount": attempt(lambda: sys(272, 0x00020000)),
        "unshare_net": attempt(lambda: sys(272, 0x40000000)),
        "clone_userns": attempt(clone_userns),
        "setns": attempt(lambda: sys(308, os.open("/proc/1/ns/net", os.O_RDONLY), 0)),
        "mount": attempt(lambda: sys(165, 0, 0, 0, 0, 0)),
        "bpf": attempt(lambda: sys(321, 0, 0, 0)),
        "perf_event_open": attempt(lambda: sys(298, 0, 0, -1, -1, 0)),
        "userfaultfd": attempt(lambda: sys(323, 0)),
        "io_uring_setup": attempt(lambda: sys(425, 8, ctypes.addressof(ctypes.create_string_buffer(120)))),
        "keyctl": attempt(lambda: sys(250, 0, 0, 0, 0)),
        "chroot": attempt(lambda: sys(161, 0)),
    }
"#;
    for mode in [Isolation::Fork, Isolation::Reuse] {
        let mut p = TestPool::start(|c| c.isolation = mode).await;
        let results = attack(&mut p, "kernel", body).await;
        all_refused(&results);
    }
}

/// What the filter must not break: subprocesses (fork + exec, which libc now does with
/// clone), threads, signalling one's own subprocess, and async code.
#[tokio::test]
async fn legitimate_process_work_still_runs() {
    let src = r#"import asyncio, os, signal, subprocess, threading
def run():
    out = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    p = subprocess.Popen(["sleep", "30"])
    p.send_signal(signal.SIGTERM)
    code = p.wait()
    box = []
    t = threading.Thread(target=lambda: box.append(1)); t.start(); t.join()
    async def main():
        await asyncio.sleep(0)
        return "async"
    return {"sh": out.isdigit(), "killed": code, "thread": box, "async": asyncio.run(main())}
"#;
    for mode in [Isolation::Fork, Isolation::Reuse] {
        let mut p = TestPool::start(|c| c.isolation = mode).await;
        let f = p.run("legit", src, "{}").await;
        assert_eq!(
            f.outcome.status,
            Status::Success,
            "{mode:?}: {:?}",
            f.outcome.error
        );
        let v: Value = serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sh": true, "killed": -15, "thread": [1], "async": "async"}),
            "{mode:?}"
        );
    }
}
