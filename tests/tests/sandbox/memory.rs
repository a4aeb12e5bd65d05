//! Hostile test: nothing of one execution is readable in the memory of a later
//! execution's child. In fork mode every child is a copy of its template's memory, so
//! whatever the template kept of an earlier execution (its source compiled or not, its
//! params and context, its logs and result relayed from its child, the replies to its
//! requests, secrets included) would be handed to every later execution of the slot,
//! whatever organization it belongs to.
//!
//! A victim execution carries a marker, random per test run, in each of those places;
//! an attacker execution on the same template (one worker) then reads its whole address
//! space and reports every marker it finds.

use std::io::Read;
use std::time::Duration;

use serde_json::{json, Value};
use warden::{Job, Status};
use warden_protocol::{Reply, ReplyOutcome, Request};
use warden_tests::pool::{job, TestPool};

/// Where the victim's markers go, by prefix: each is the prefix followed by the run's
/// token. `log` and `res` are built by the victim at run time, so they exist only in its
/// log line and its result.
const KINDS: [(&str, &str); 6] = [
    ("src", "a string literal in the workflow's source"),
    ("par", "the params"),
    ("ctx", "a config value in the context"),
    ("sec", "a secret, in the Reply to the victim's request"),
    ("log", "a log line"),
    ("res", "the result"),
];

/// The victim: every kind of execution data, each holding its marker.
fn victim_source(token: &str) -> String {
    format!(
        r#"import warden
SRC = "src{token}"

def run(p, padding):
    tail = SRC[3:]
    # Many frames, more than one read of the relay's and more than its first buffer.
    for i in range(300):
        print("log" + tail, i, padding[:100])
    color = warden.config.get("color")
    secret = warden.config.get("api_token")
    return {{"res": "res" + tail, "p": p, "color": color, "secret": secret}}
"#
    )
}

/// The attacker reads its own memory: every readable region of /proc/self/maps, through
/// /proc/self/mem (ctypes if that cannot be opened), and reports where each needle is.
///
/// The trick that keeps it from finding its own copies: it is never given a marker,
/// only the marker with every byte plus one (`needles`). Each chunk of memory it reads
/// is shifted the same way (`bytes.translate`) before the search, so a needle matches
/// only where memory holds the marker itself. Its own needles shift to something else
/// (every byte plus two) and never match, nor do the shifted chunks it builds (they hold
/// the needles, never the markers). The control does the opposite: the attacker decodes
/// it into a raw copy that it keeps alive, which the scan must find, or the scan is
/// not seeing memory at all.
const ATTACKER: &str = r#"import ctypes, os

SHIFT = bytes((i + 1) % 256 for i in range(256))
SKIP = ("[vvar]", "[vvar_vclock]", "[vsyscall]")
CHUNK = 1 << 20

def run(needles, control):
    raw_control = bytes((b - 1) % 256 for b in control.encode())
    wanted = {name: n.encode() for name, n in needles.items()}
    wanted["control"] = control.encode()
    overlap = max(len(n) for n in wanted.values()) - 1
    # A child is not dumpable (it changed uid), which makes its /proc/self/mem root's;
    # it may make itself dumpable again.
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
        how = "mem"
        def read(addr, size):
            return os.pread(fd, size, addr)
    except OSError as e:
        fd, how = None, "ctypes (/proc/self/mem: errno %d)" % e.errno
        def read(addr, size):
            return ctypes.string_at(addr, size)
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    found, scanned, unreadable = {}, 0, []
    for line in maps:
        parts = line.split(None, 5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        name = parts[5].strip() if len(parts) > 5 else "[anon]"
        if parts[1][0] != "r" or name in SKIP:
            continue
        if how != "mem" and name.startswith("/"):
            # Without /proc/self/mem, reading a file mapping past its file's end would
            # be a SIGBUS: stop at the end of the file.
            try:
                left = os.stat(name).st_size - int(parts[2], 16)
            except OSError:
                continue
            end = min(end, start + max(0, (left + 4095) // 4096 * 4096))
        addr = start
        while addr < end:
            size = min(CHUNK + overlap, end - addr)
            try:
                data = read(addr, size)
            except OSError:
                unreadable.append(name)
                break
            scanned += len(data)
            shifted = data.translate(SHIFT)
            for kind, needle in wanted.items():
                at = shifted.find(needle)
                if at >= 0:
                    found.setdefault(kind, []).append("%s+%#x" % (name, addr + at - start))
            addr += CHUNK
    if fd is not None:
        os.close(fd)
    control_found = "control" in found
    found.pop("control", None)
    return {
        "how": how,
        "scanned": scanned,
        "unreadable": sorted(set(unreadable)),
        "control": control_found and len(raw_control) > 0,
        "found": found,
    }
"#;

/// Unrelated executions, as other organizations' traffic would be.
const OTHER: &str = r#"import json
def run(n):
    data = [{"i": i, "s": "other-%d" % i} for i in range(n)]
    print("other traffic", len(data))
    return json.dumps(data)[:64]
"#;

fn random_token() -> String {
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `s` with every byte plus one: what the attacker is given instead of a marker.
fn shifted(s: &str) -> String {
    s.bytes().map(|b| char::from(b + 1)).collect()
}

fn answer_secret(token: &str) -> impl FnMut(&Request) -> Reply + '_ {
    move |req: &Request| {
        let outcome = if req.op == "config_secret" {
            ReplyOutcome::Ok {
                value_json: json!({ "value": format!("sec{token}") }).to_string(),
            }
        } else {
            ReplyOutcome::Err {
                message: format!("`{}` is not available: test", req.op),
            }
        };
        Reply {
            execution_id: req.execution_id.clone(),
            request_id: req.request_id,
            outcome,
        }
    }
}

/// The victim's job: its params (padded: a larger Execute than a few lines of source, as
/// real ones are) and context carry the token's markers.
fn victim_job(token: &str) -> Job {
    let mut victim = job(
        "victim",
        &victim_source(token),
        &json!({ "p": format!("par{token}"), "padding": "x".repeat(20_000) }).to_string(),
        None,
    );
    victim.context_json = json!({
        "org": {"id": 1, "name": "victim-org"},
        "config": {"org": {"values": {"color": format!("ctx{token}")}, "secrets": ["api_token"]}},
    })
    .to_string();
    victim
}

/// Runs the victim, `between` unrelated executions, then the attacker, all on the one
/// template of a one-worker fork-mode pool, and returns what the attacker reported.
async fn victim_then_attacker(between: usize) -> serde_json::Map<String, Value> {
    let token = random_token();
    let mut p = TestPool::start(|_| {}).await;

    assert!(p.pool.submit(victim_job(&token)).is_ok());
    let f = p.finished_answering(answer_secret(&token)).await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    // Every marker really went through the template.
    let result: Value = serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
    assert_eq!(
        result,
        json!({
            "res": format!("res{token}"),
            "p": format!("par{token}"),
            "color": format!("ctx{token}"),
            "secret": format!("sec{token}"),
        })
    );
    assert!(
        f.logs
            .iter()
            .filter(|l| l.message.starts_with(&format!("log{token} ")))
            .count()
            == 300,
        "{:?}",
        f.logs
    );

    for i in 0..between {
        let f = p
            .run(
                &format!("other-{i}"),
                OTHER,
                &json!({ "n": 50 + i }).to_string(),
            )
            .await;
        assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    }

    let needles: serde_json::Map<String, Value> = KINDS
        .iter()
        .map(|(kind, _)| (kind.to_string(), shifted(&format!("{kind}{token}")).into()))
        .collect();
    let params = json!({ "needles": needles, "control": shifted(&format!("ctl{token}")) });
    let f = p.run("attacker", ATTACKER, &params.to_string()).await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    let report: Value = serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
    let report = report.as_object().unwrap().clone();
    assert_eq!(
        report["control"],
        json!(true),
        "the scan did not find the attacker's own copy of the control: {report:?}"
    );
    report
}

fn assert_nothing_found(report: &serde_json::Map<String, Value>) {
    let found = report["found"].as_object().unwrap();
    let leaks: Vec<String> = found
        .iter()
        .map(|(kind, at)| {
            let what = KINDS.iter().find(|(k, _)| k == kind).map_or("?", |k| k.1);
            format!("{what} ({kind}) at {at}")
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "a later execution read the victim's data in its own memory:\n  {}\n(scanned {} bytes via {})",
        leaks.join("\n  "),
        report["scanned"],
        report["how"],
    );
}

#[tokio::test]
async fn the_next_execution_finds_nothing_of_the_previous_one_in_its_memory() {
    let report = victim_then_attacker(0).await;
    assert_nothing_found(&report);
}

#[tokio::test]
async fn an_execution_finds_nothing_of_an_earlier_one_after_other_traffic() {
    let report = victim_then_attacker(3).await;
    assert_nothing_found(&report);
}

/// Runs the victim's workflow (one path, as a real workflow has) `times` times for
/// `victim-org`, so that the template hands its compiled code down (asked for on the
/// second execution in a row, handed down from the third), then the attacker for
/// `attacker_org`, and returns what the attacker found.
async fn attacker_after_code_cache(attacker_org: &str) -> serde_json::Map<String, Value> {
    let token = random_token();
    let mut p = TestPool::start(|_| {}).await;
    let source = victim_source(&token);
    for i in 0..3 {
        let mut victim = job(
            "victim",
            &source,
            &json!({ "p": "p", "padding": "" }).to_string(),
            None,
        );
        victim.execution_id = format!("victim-{i}").into();
        victim.org = Some("victim-org".into());
        assert!(p.pool.submit(victim).is_ok());
        let f = p.finished().await;
        // config.get is answered `unavailable` by the test pool: the function raises
        // after its source's marker went through compilation, which is what matters.
        assert_eq!(f.outcome.execution_id, format!("victim-{i}"));
    }
    let needles: serde_json::Map<String, Value> = KINDS
        .iter()
        .map(|(kind, _)| (kind.to_string(), shifted(&format!("{kind}{token}")).into()))
        .collect();
    let params = json!({ "needles": needles, "control": shifted(&format!("ctl{token}")) });
    let mut attacker = job("attacker", ATTACKER, &params.to_string(), None);
    attacker.org = Some(attacker_org.into());
    assert!(p.pool.submit(attacker).is_ok());
    let f = p.finished().await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    let report: Value = serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
    let report = report.as_object().unwrap().clone();
    assert_eq!(report["control"], json!(true), "{report:?}");
    report
}

#[tokio::test]
async fn compiled_code_a_template_hands_down_never_reaches_another_organization() {
    let report = attacker_after_code_cache("attacker-org").await;
    assert_nothing_found(&report);
}

/// The control for the test above: within one organization the template does hand the
/// compiled code down (so the scan above had something to miss), and nothing else.
#[tokio::test]
async fn compiled_code_is_handed_down_within_the_organization_and_nothing_else_is() {
    let report = attacker_after_code_cache("victim-org").await;
    let found = report["found"].as_object().unwrap();
    let kinds: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        ["src"],
        "the victim's own organization should inherit its compiled code (the source's \
         string constant) and nothing else: {report:?}"
    );
}

/// Fork mode sends a busy template its next job ahead when executions are short
/// (`warden::pool` dispatcher, "Sent ahead"): the template holds the victim's `Execute`
/// while the attacker just before it runs. The attacker's child was forked before that
/// and must find none of it; the victim still runs, with all its data, after it.
#[tokio::test]
async fn an_execution_finds_nothing_of_the_one_sent_ahead_of_it() {
    let token = random_token();
    // "Short" generously: a debug build on a busy machine may take more than the
    // default's 10 ms for a trivial execution.
    let mut p = TestPool::start(|cfg| cfg.ahead_if_under = Duration::from_secs(2)).await;
    // Short executions first: nothing goes ahead of a slot's first or of a long one.
    for i in 0..3 {
        let f = p.run(&format!("warm-{i}"), OTHER, r#"{"n": 1}"#).await;
        assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    }
    let ahead_before = p.pool.stats().sent_ahead;
    // Back to back: the filler runs, the attacker goes ahead of its end, and the victim
    // ahead of the attacker's as soon as the attacker starts.
    p.submit("filler", OTHER, r#"{"n": 1}"#, None);
    let needles: serde_json::Map<String, Value> = KINDS
        .iter()
        .map(|(kind, _)| (kind.to_string(), shifted(&format!("{kind}{token}")).into()))
        .collect();
    let params = json!({ "needles": needles, "control": shifted(&format!("ctl{token}")) });
    p.submit("attacker", ATTACKER, &params.to_string(), None);
    assert!(p.pool.submit(victim_job(&token)).is_ok());

    let mut reports = None;
    for _ in 0..3 {
        let f = p.finished_answering(answer_secret(&token)).await;
        assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
        match f.outcome.execution_id.as_str() {
            "attacker" => {
                let report: Value =
                    serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
                reports = Some(report.as_object().unwrap().clone());
            }
            "victim" => {
                let result: Value =
                    serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
                assert_eq!(result["secret"], json!(format!("sec{token}")));
                assert_eq!(result["p"], json!(format!("par{token}")));
            }
            other => assert_eq!(other, "filler"),
        }
    }
    // Both really went ahead (else this test proves nothing about it).
    assert_eq!(
        p.pool.stats().sent_ahead - ahead_before,
        2,
        "the attacker and the victim were not both sent ahead"
    );
    let report = reports.expect("the attacker finished");
    assert_eq!(report["control"], json!(true), "{report:?}");
    assert_nothing_found(&report);
}
