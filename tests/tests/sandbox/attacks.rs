//! Hostile workflows against the sandbox's process boundary: each test runs what an
//! attacker's workflow would run and asserts that it fails, and that the slot still
//! serves the next execution correctly afterwards.
//!
//! The attacks report what each system call returned (an errno, or "ok") as their
//! result, so a failure names exactly which attack got through.

use serde_json::Value;
use warden::Status;
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
    let v = result_of(p, id, &src, "{}").await;
    v.as_object().expect("a dict of results").clone()
}

/// Runs `src` to its end and returns its result, failing the test (with `id` and the
/// pool's mode in the message) unless it succeeded.
async fn result_of(p: &mut TestPool, id: &str, src: &str, params: &str) -> Value {
    let f = p.run(id, src, params).await;
    assert_eq!(
        f.outcome.status,
        Status::Success,
        "{id} ({:?}): {:?}",
        p.cfg.isolation,
        f.outcome.error
    );
    serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap()
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
        let v = result_of(&mut p, "legit", src, "{}").await;
        assert_eq!(
            v,
            serde_json::json!({"sh": true, "killed": -15, "thread": [1], "async": "async"}),
            "{mode:?}"
        );
    }
}

/// This host's address on its default route (not loopback): what a workflow would try
/// once 127.0.0.1 is refused. A UDP `connect` sends nothing; it only picks the route.
fn host_address() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("10.255.255.1:9").unwrap();
    s.local_addr().unwrap().ip()
}

/// Loopback TCP (Redis, PostgreSQL, a listener of the test's own on every address),
/// the host's own address, and Unix sockets (PostgreSQL's, an abstract one): all refused.
#[tokio::test]
async fn a_workflow_cannot_reach_services_on_this_host() {
    let mut p = TestPool::start(|_| {}).await;
    if p.pool.slot_ids().is_empty() {
        eprintln!(
            "not root: workers share the supervisor's uid and the firewall rule is not applied"
        );
        return;
    }
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let abstract_name = format!("warden-test-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
    let unix = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    unix.set_nonblocking(true).unwrap();
    let body = format!(
        r#"    import socket
    def tcp(host, port):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((host, port))
        s.close()
    def unix(path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
    return {{
        "redis": attempt(lambda: tcp("127.0.0.1", 6379)),
        "redis_v6": attempt(lambda: tcp("::1", 6379)),
        "postgres": attempt(lambda: tcp("127.0.0.1", 5432)),
        "listener_loopback": attempt(lambda: tcp("127.0.0.1", {port})),
        "listener_host_address": attempt(lambda: tcp("{host}", {port})),
        "postgres_socket": attempt(lambda: unix("/var/run/postgresql/.s.PGSQL.5432")),
        "abstract_socket": attempt(lambda: unix("\0{abstract_name}")),
    }}
"#,
        host = host_address(),
    );
    let results = attack(&mut p, "host", &body).await;
    all_refused(&results);
    assert!(
        listener.accept().is_err(),
        "the test's TCP listener was reached"
    );
    assert!(
        unix.accept().is_err(),
        "the test's abstract socket was reached"
    );
}

/// The worker's Redis URL (with its password) is on no command line and in no
/// environment a workflow can read.
#[tokio::test]
async fn no_credential_on_a_command_line_or_in_the_environment() {
    let mut p = TestPool::start(|c| {
        c.redis_url = Some("redis://:cmdline-secret-4711@127.0.0.1:6379".into());
    })
    .await;
    let src = r#"import os
def run():
    seen = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for what in ("cmdline", "environ"):
            try:
                with open("/proc/%s/%s" % (pid, what), "rb") as f:
                    if b"cmdline-secret-4711" in f.read():
                        seen.append((pid, what))
            except OSError:
                pass
    if any("cmdline-secret-4711" in v for v in os.environ.values()):
        seen.append(("self", "os.environ"))
    return seen
"#;
    let f = p.run("creds", src, "{}").await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    assert_eq!(f.outcome.result_json.as_deref(), Some("[]"));
}

/// Files an execution leaves anywhere it may write are gone before the next one, which
/// runs in a directory of its own; private tmp directories are bounded.
#[tokio::test]
async fn nothing_an_execution_writes_outlives_it() {
    let mut p = TestPool::start(|c| c.tmp_size = 8 * 1024 * 1024).await;
    let private = !p.pool.slot_ids().is_empty();
    // Without root there is no private /tmp: only the execution's own directories count.
    let write = r#"import os, tempfile
def run(private):
    places = [os.getcwd(), tempfile.gettempdir(), os.environ["HOME"]]
    if private:
        places += ["/tmp", "/var/tmp", "/dev/shm"]
    written = []
    for d in places:
        try:
            with open(os.path.join(d, "left-by-b.txt"), "w") as f:
                f.write("secret of org b")
            written.append(d)
        except OSError:
            pass
    return {"cwd": os.getcwd(), "written": written, "own": places[:3]}
"#;
    let params = format!("{{\"private\": {private}}}");
    let first = result_of(&mut p, "writer", write, &params).await;
    let written: Vec<String> = serde_json::from_value(first["written"].clone()).unwrap();
    // HOME and TMPDIR (set by the template before it forked the child) are the
    // directory the child made and entered.
    let own = &first["own"];
    assert!(
        own[0] == first["cwd"] && own[1] == own[0] && own[2] == own[0],
        "{own}"
    );
    assert!(
        written.len() >= 3,
        "cwd, TMPDIR and HOME are writable: {written:?}"
    );
    if private {
        assert_eq!(written.len(), 6, "{written:?}");
    }
    let read = format!(
        r#"import os
def run():
    found = []
    for d in {written:?}:
        if os.path.exists(os.path.join(d, "left-by-b.txt")):
            found.append(d)
    big = "not tried"
    if {private}:
        try:
            with open("/tmp/big", "wb") as f:
                f.write(b"x" * (16 * 1024 * 1024))
            big = "ok"
        except OSError as e:
            big = e.errno
    return {{"cwd": os.getcwd(), "found": found, "big": big}}
"#,
        private = if private { "True" } else { "False" },
    );
    let second = result_of(&mut p, "reader", &read, "{}").await;
    assert_ne!(
        second["cwd"], first["cwd"],
        "each execution has its own directory"
    );
    assert_eq!(
        second["found"],
        serde_json::json!([]),
        "files outlived their execution"
    );
    if private {
        assert_eq!(
            second["big"],
            serde_json::json!(libc::ENOSPC),
            "/tmp is bounded"
        );
    }
}

/// Raw writes to fds 1 and 2 (the supervisor's own stdout and stderr, before) become
/// log lines of the execution; the descriptors are not the supervisor's files.
#[tokio::test]
async fn raw_writes_to_fd_1_and_2_are_the_executions_logs() {
    let mut p = TestPool::start(|_| {}).await;
    let src = r#"import os, subprocess
def run():
    os.write(1, b"raw stdout line\n")
    os.write(2, b"2026-12-01T00:00:00Z  INFO warden: forged supervisor line\n")
    subprocess.run(["sh", "-c", "echo from a subprocess"])
    targets = [os.readlink("/proc/self/fd/%d" % fd) for fd in (1, 2)]
    return {"targets": targets}
"#;
    let f = p.run("raw", src, "{}").await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    let v: Value = serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
    for t in v["targets"].as_array().unwrap() {
        assert!(
            t.as_str().unwrap().starts_with("/memfd:warden-output"),
            "{v}"
        );
    }
    let lines: Vec<&str> = f.logs.iter().map(|l| l.message.trim_end()).collect();
    for expected in [
        "raw stdout line",
        "2026-12-01T00:00:00Z  INFO warden: forged supervisor line",
        "from a subprocess",
    ] {
        assert!(lines.contains(&expected), "{expected:?} not in {lines:?}");
    }
}

/// Reuse mode: a template runs one organization's code only. An organization that
/// installs a spy in the interpreter (here: wrapping `json.loads`, which the runner uses
/// on every execution's params) never sees another organization's params: the other
/// organization gets a fresh template, and so does the spy's next execution.
#[tokio::test]
async fn a_reuse_template_serves_one_organization() {
    let mut p = TestPool::start(|c| c.isolation = Isolation::Reuse).await;
    let run_as = |p: &mut TestPool, id: &str, org: &str, src: &str, params: &str| {
        let mut j = warden_tests::pool::job(id, src, params, None);
        j.org = Some(org.to_string());
        assert!(p.pool.submit(j).is_ok());
    };
    let spy = r#"import json, os
def run():
    if not hasattr(json, "seen"):
        json.seen = []
        real = json.loads
        def spy(s, *a, **k):
            json.seen.append(s if isinstance(s, str) else repr(s))
            return real(s, *a, **k)
        json.loads = spy
    return {"pid": os.getpid(), "seen": [s for s in json.seen if "victim-secret" in s]}
"#;
    let victim = "import os\ndef run(token):\n    return {\"pid\": os.getpid()}\n";
    run_as(&mut p, "a1", "attacker", spy, "{}");
    let a1 = p.finished().await;
    run_as(&mut p, "a2", "attacker", spy, "{}");
    let a2 = p.finished().await;
    run_as(
        &mut p,
        "b1",
        "victim",
        victim,
        r#"{"token": "victim-secret-42"}"#,
    );
    let b1 = p.finished().await;
    run_as(&mut p, "a3", "attacker", spy, "{}");
    let a3 = p.finished().await;
    let pid = |f: &warden_tests::pool::Finished| -> Value {
        assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
        serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap()
    };
    let (a1, a2, b1, a3) = (pid(&a1), pid(&a2), pid(&b1), pid(&a3));
    assert_eq!(a1["pid"], a2["pid"], "one organization keeps its template");
    assert_ne!(
        b1["pid"], a2["pid"],
        "another organization gets another template"
    );
    assert_ne!(a3["pid"], b1["pid"]);
    assert_eq!(
        a3["seen"],
        serde_json::json!([]),
        "the spy saw the victim's params"
    );
}

/// The file-size limit holds in both modes, and the reuse template is held to the
/// memory limit like a forked child.
#[tokio::test]
async fn file_size_and_memory_limits_hold_in_both_modes() {
    let src = r#"def run():
    out = {}
    try:
        with open("big.bin", "wb") as f:
            f.write(b"x" * (3 * 1024 * 1024))
        out["file"] = "ok"
    except OSError as e:
        out["file"] = e.errno
    try:
        b = bytearray(768 * 1024 * 1024)
        out["memory"] = "ok"
    except MemoryError:
        out["memory"] = "MemoryError"
    return out
"#;
    for mode in [Isolation::Fork, Isolation::Reuse] {
        let mut p = TestPool::start(|c| {
            c.isolation = mode;
            c.limits.file_bytes = 1024 * 1024;
            c.limits.memory_bytes = 512 * 1024 * 1024;
        })
        .await;
        let v = result_of(&mut p, "limits", src, "{}").await;
        assert_eq!(
            v,
            serde_json::json!({"file": libc::EFBIG, "memory": "MemoryError"}),
            "{mode:?}"
        );
    }
}

/// Another host, made by the test: a network namespace behind a veth pair, with a
/// listener that greets whoever connects. Removed when dropped.
struct OtherHost {
    ns: String,
    host_if: String,
    server: std::process::Child,
    addr: String,
}

impl OtherHost {
    fn start(port: u16) -> Option<OtherHost> {
        // Unique per host made in this test binary (its tests run in parallel).
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = 20 + (std::process::id() % 50) * 4 + n % 4;
        let ns = format!("wardentest{id}");
        let (host_if, ns_if) = (format!("wvh{id}"), format!("wvn{id}"));
        let (host_ip, addr) = (format!("10.231.{id}.1/30"), format!("10.231.{id}.2"));
        let ip = |args: &str| {
            std::process::Command::new("ip")
                .args(args.split_whitespace())
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = ip(&format!("netns del {ns}"));
        let _ = ip(&format!("link del {host_if}"));
        let ok = ip(&format!("netns add {ns}"))
            && ip(&format!("link add {host_if} type veth peer name {ns_if}"))
            && ip(&format!("link set {ns_if} netns {ns}"))
            && ip(&format!("addr add {host_ip} dev {host_if}"))
            && ip(&format!("link set {host_if} up"))
            && ip(&format!(
                "netns exec {ns} ip addr add {addr}/30 dev {ns_if}"
            ))
            && ip(&format!("netns exec {ns} ip link set {ns_if} up"));
        if !ok {
            return None;
        }
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c"])
            .arg(format!(
                "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('{addr}', {port}))\ns.listen()\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'hello from another host')\n    c.close()\n"
            ))
            .spawn()
            .ok()?;
        Some(OtherHost {
            ns,
            host_if,
            server,
            addr,
        })
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        for args in [
            vec!["netns", "del", &self.ns],
            vec!["link", "del", &self.host_if],
        ] {
            let _ = std::process::Command::new("ip").args(args).status();
        }
    }
}

/// Blocking the host's services leaves egress alone: a workflow still reaches another
/// host (one the test makes in a network namespace of its own).
#[tokio::test]
async fn a_workflow_still_reaches_other_hosts() {
    let mut p = TestPool::start(|_| {}).await;
    if p.pool.slot_ids().is_empty() {
        eprintln!("not root: no firewall rule to check, and no network namespace to make");
        return;
    }
    let Some(other) = OtherHost::start(8099) else {
        panic!("cannot make a network namespace with `ip` (iproute2) as root");
    };
    let src = format!(
        r#"import socket, time
def run():
    for attempt in range(50):
        try:
            s = socket.create_connection(("{addr}", 8099), timeout=3)
            return s.recv(100).decode()
        except ConnectionRefusedError:
            time.sleep(0.1)   # the listener is still starting
    return "never answered"
"#,
        addr = other.addr
    );
    let f = p.run("egress", &src, "{}").await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    assert_eq!(
        f.outcome.result_json.as_deref(),
        Some("\"hello from another host\"")
    );
}

/// Two pools on one host (two supervisors, or `warden exec` beside `warden serve`)
/// never share a uid, so neither's workflows can signal or trace the other's workers;
/// a pool's uids come back to the host when it stops.
#[tokio::test]
async fn two_pools_never_share_a_uid() {
    let a = TestPool::start(|c| c.workers = 2).await;
    let b = TestPool::start(|c| c.workers = 2).await;
    if a.pool.slot_ids().is_empty() {
        eprintln!("not root: workers run as the supervisor's user");
        return;
    }
    let ids = |p: &TestPool| -> Vec<u32> {
        p.pool
            .slot_ids()
            .iter()
            .flat_map(|i| [i.template, i.child])
            .collect()
    };
    let (ia, ib) = (ids(&a), ids(&b));
    assert_eq!(ia.len(), 4);
    assert!(
        ia.iter().all(|u| !ib.contains(u)),
        "{ia:?} and {ib:?} overlap"
    );
}

/// `--network none`: not even another host.
#[tokio::test]
async fn with_no_network_a_workflow_reaches_no_host_at_all() {
    let mut p = TestPool::start(|c| c.network_isolation = true).await;
    if p.pool.slot_ids().is_empty() {
        eprintln!("not root: no network namespace");
        return;
    }
    let Some(other) = OtherHost::start(8098) else {
        panic!("cannot make a network namespace with `ip` (iproute2) as root");
    };
    let body = format!(
        r#"    import socket
    def tcp(host, port):
        socket.create_connection((host, port), timeout=3).close()
    return {{
        "other_host": attempt(lambda: tcp("{addr}", 8098)),
        "redis": attempt(lambda: tcp("127.0.0.1", 6379)),
    }}
"#,
        addr = other.addr
    );
    all_refused(&attack(&mut p, "no-network", &body).await);
}

/// UDP to the host is blocked like TCP, except DNS (a resolver on loopback, such as
/// systemd-resolved's, must keep answering workflows): the test's own listeners on
/// 127.0.0.1 receive the datagram sent to port 53 and not the one sent elsewhere.
#[tokio::test]
async fn udp_to_the_host_is_blocked_but_dns_on_loopback() {
    let mut p = TestPool::start(|_| {}).await;
    if p.pool.slot_ids().is_empty() {
        eprintln!("not root: no firewall rule");
        return;
    }
    let Ok(dns) = std::net::UdpSocket::bind("127.0.0.1:53") else {
        eprintln!("port 53 is taken on this host: nothing to check it against");
        return;
    };
    let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&dns, &other] {
        s.set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .unwrap();
    }
    let src = format!(
        r#"import socket
def run():
    for port in (53, {port}):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"hello", ("127.0.0.1", port))
        except OSError:
            pass
    return 1
"#,
        port = other.local_addr().unwrap().port()
    );
    result_of(&mut p, "udp", &src, "{}").await;
    let mut buf = [0u8; 16];
    assert!(
        dns.recv_from(&mut buf).is_ok(),
        "DNS on loopback was blocked"
    );
    assert!(
        other.recv_from(&mut buf).is_err(),
        "UDP to the host got through"
    );
}

/// The compiled-code hand-down (see the worker's `code_cache`): a workflow forges the
/// frame a child sends its template with the code it compiled, carrying code of its
/// choosing, so that later executions of the workflow would run it. The template takes
/// that frame only first and only when it asked for it, before any of the workflow ran;
/// a forged one kills the execution, and the next run is the genuine code.
#[tokio::test]
async fn a_workflow_cannot_plant_compiled_code_for_later_executions() {
    const WORKFLOW: &str = "import os\ndef run(forge):\n    if forge:\n        os.write(3, bytes.fromhex(forge))\n    return 'genuine'\n";
    let path = "flows/planted.py";
    // What the attacker wants later executions to run: the same function, returning
    // something else, compiled by the same CPython the worker embeds.
    let planted = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import marshal, sys; sys.stdout.buffer.write(marshal.dumps(compile(sys.argv[1], sys.argv[2], 'exec')))",
            "def run(forge):\n    return 'planted'\n",
            path,
        ])
        .output()
        .expect("python3");
    assert!(planted.status.success() && !planted.stdout.is_empty());
    let forged = warden_protocol::frame::encode(
        &warden_protocol::FromWorker::Compiled(planted.stdout),
        warden_protocol::frame::DEFAULT_MAX_FRAME,
    )
    .unwrap();
    let forged: String = forged.iter().map(|b| format!("{b:02x}")).collect();

    let mut p = TestPool::start(|_| {}).await;
    let mut run = async |i: usize, forge: &str| {
        let mut j = warden_tests::pool::job(
            &format!("planted-{i}"),
            WORKFLOW,
            &serde_json::json!({ "forge": forge }).to_string(),
            None,
        );
        j.path = path.into();
        j.org = Some("attacker-org".into());
        assert!(p.pool.submit(j).is_ok());
        p.finished().await
    };
    // The first of a row (no code asked for), then the second (asked for: the child's
    // genuine code goes first, the forgery after it), then more.
    for i in 0..4 {
        let f = run(i, &forged).await;
        assert_eq!(
            f.outcome.status,
            Status::Crashed,
            "run {i}: {:?}",
            f.outcome
        );
        let e = f.outcome.error.unwrap();
        assert!(
            e.message.contains("compiled code"),
            "run {i}: {}",
            e.message
        );
        let f = run(i + 100, "").await;
        assert_eq!(
            f.outcome.status,
            Status::Success,
            "run {i}: {:?}",
            f.outcome.error
        );
        assert_eq!(
            f.outcome.result_json.as_deref(),
            Some("\"genuine\""),
            "run {i}: later executions must run the workflow's own code"
        );
    }
}
