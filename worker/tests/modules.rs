//! The workspace module cache, worker side, against a real Redis: the Rust finder
//! serving a snapshot the template loads (and its children inherit), catching up with a
//! new generation before an execution, refilling a partial eviction through the
//! supervisor, and asking the supervisor to refill a wiped cache. The test plays the
//! supervisor: it writes the cache's keys and answers `module_miss` requests.

mod common;

use common::redis_cache::{CountingProxy, TestCache};
use common::*;
use serde_json::json;
use warden_protocol::{Execute, ReplyOutcome, ToWorker};

const WORKSPACE: &[(&str, &str)] = &[
    ("shared/__init__.py", "from .tickets import open_ticket\nVERSION = 1\n"),
    (
        "shared/tickets.py",
        "from . import util\n\ndef open_ticket(title):\n    return {'title': util.slug(title)}\n",
    ),
    (
        "shared/util.py",
        "def slug(s):\n    return s.lower().replace(' ', '-')\n\ndef boom():\n    raise ValueError('util says no')\n",
    ),
    ("tools/text/case.py", "def up(s):\n    return s.upper()\n"),
    ("cyc/a.py", "from cyc.b import g\n\ndef f():\n    return 1\n"),
    ("cyc/b.py", "from cyc.a import f\n\ndef g():\n    return 2\n"),
    ("broken/bad.py", "x = 1\ndef oops(:\n    pass\n"),
];

fn start(cache: &TestCache, url: &str, isolation: &'static str) -> Worker {
    Worker::start_with(&Options {
        isolation,
        redis: Some((url.to_string(), cache.prefix.clone())),
        ..Options::default()
    })
}

/// What the supervisor does for an execution: the manifest (the worker ignores one it
/// already has), then the `Execute` at `generation` under it.
fn run_at(
    w: &mut Worker,
    cache: &TestCache,
    generation: u64,
    mut e: Execute,
    answer: impl FnMut(&warden_protocol::Request) -> ReplyOutcome,
) -> Run {
    let manifest = cache.manifest();
    e.modules_generation = generation;
    e.modules_manifest = manifest.id;
    w.send(&ToWorker::Modules(manifest));
    w.execute_answering(e, answer)
}

fn no_requests(req: &warden_protocol::Request) -> ReplyOutcome {
    panic!("unexpected request {req:?}")
}

#[test]
fn packages_submodules_relative_and_namespace_imports_work() {
    let cache = TestCache::new();
    let generation = cache.put(WORKSPACE);
    let src = r#"
import json
import shared, shared.tickets, tools.text.case
from shared import open_ticket
from tools.text import case

def run():
    return {
        "ticket": open_ticket("Disk Full"),
        "version": shared.VERSION,
        "file": shared.tickets.__file__,
        "pkg_file": shared.__file__,
        "path": shared.__path__,
        "package": shared.tickets.__package__,
        "ns_file": getattr(tools, "__file__", None),
        "ns_path": list(tools.text.__path__),
        "up": case.up("x"),
        "json": json.__name__,
    }
"#;
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &redis_url_for_tests(), mode);
        let run = run_at(&mut w, &cache, generation, exec("imp", src), no_requests);
        assert_eq!(
            run.value(),
            json!({
                "ticket": {"title": "disk-full"},
                "version": 1,
                "file": "shared/tickets.py",
                "pkg_file": "shared/__init__.py",
                "path": [],
                "package": "shared",
                "ns_file": null,
                "ns_path": [],
                "up": "X",
                "json": "json",
            }),
            "{mode}"
        );
    }
}

#[test]
fn errors_name_the_workspace_module() {
    let cache = TestCache::new();
    let generation = cache.put(WORKSPACE);
    let cases = [
        (
            "import shared.util\n\ndef run():\n    shared.util.boom()\n",
            "ValueError",
            "util says no",
            &[
                "File \"shared/util.py\", line 5, in boom",
                "raise ValueError('util says no')",
            ][..],
        ),
        (
            "import broken.bad\n\ndef run():\n    pass\n",
            "SyntaxError",
            "(broken/bad.py, line 2)",
            &["File \"broken/bad.py\", line 2", "def oops(:"][..],
        ),
        (
            "import cyc.a\n\ndef run():\n    pass\n",
            "ImportError",
            "circular import",
            &["File \"cyc/b.py\", line 1"][..],
        ),
        (
            "import shared.nope\n\ndef run():\n    pass\n",
            "ModuleNotFoundError",
            "No module named 'shared.nope'",
            &[][..],
        ),
        (
            "import not_in_the_workspace_xyz\n\ndef run():\n    pass\n",
            "ModuleNotFoundError",
            "No module named 'not_in_the_workspace_xyz'",
            &[][..],
        ),
    ];
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &redis_url_for_tests(), mode);
        for (i, (src, error_type, message, traceback)) in cases.iter().enumerate() {
            let run = run_at(
                &mut w,
                &cache,
                generation,
                exec(&format!("e{i}"), src),
                no_requests,
            );
            let f = run.failure();
            assert_eq!(&f.error_type, error_type, "{mode}: {f:#?}");
            assert!(f.message.contains(message), "{mode}: {f:#?}");
            for line in *traceback {
                assert!(f.traceback.contains(line), "{mode}: {line:?} in {f:#?}");
            }
        }
    }
}

#[test]
fn steady_state_imports_cost_no_redis_command() {
    let cache = TestCache::new();
    let generation = cache.put(WORKSPACE);
    let proxy = CountingProxy::start();
    let src = "from shared import open_ticket\n\ndef run():\n    return open_ticket('A B')\n";
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &proxy.url, mode);
        // The first execution of this generation may load (the template loaded at start).
        let run = run_at(&mut w, &cache, generation, exec("warm", src), no_requests);
        assert_eq!(run.value(), json!({"title": "a-b"}));
        let (commands, connections) = (proxy.commands(), proxy.connections());
        for i in 0..30 {
            let run = run_at(
                &mut w,
                &cache,
                generation,
                exec(&format!("s{i}"), src),
                no_requests,
            );
            assert_eq!(run.value(), json!({"title": "a-b"}), "{mode}");
        }
        assert_eq!(
            proxy.commands(),
            commands,
            "{mode}: Redis commands in the steady state"
        );
        assert_eq!(
            proxy.connections(),
            connections,
            "{mode}: Redis connections"
        );
    }
}

#[test]
fn a_new_generation_is_loaded_before_the_execution_and_only_changed_modules_move() {
    let cache = TestCache::new();
    let g1 = cache.put(&[("cfg/__init__.py", ""), ("cfg/value.py", "V = 1\n")]);
    let proxy = CountingProxy::start();
    let src = "import cfg.value\n\ndef run():\n    return cfg.value.V\n";
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &proxy.url, mode);
        assert_eq!(
            run_at(&mut w, &cache, g1, exec("v1", src), no_requests).value(),
            json!(1)
        );
        let g2 = cache.put(&[("cfg/value.py", "V = 2\n")]);
        let before = proxy.commands();
        assert_eq!(
            run_at(&mut w, &cache, g2, exec("v2", src), no_requests).value(),
            json!(2),
            "{mode}: an execution after a push sees the new code"
        );
        // Connect (+ the client's SETINFO), index, hashes, and one changed module.
        let used = proxy.commands() - before;
        assert!(used <= 8, "{mode}: {used} commands to catch up");
        // And back: a module removed from the workspace is gone for the next execution.
        let g3 = cache.remove(&["cfg/value.py"]);
        let f = run_at(&mut w, &cache, g3, exec("v3", src), no_requests);
        assert_eq!(f.failure().error_type, "ModuleNotFoundError", "{mode}");
        assert!(
            f.failure().message.contains("cfg.value"),
            "{mode}: {:?}",
            f.failure()
        );
        cache.put(&[("cfg/value.py", "V = 1\n")]);
    }
}

#[test]
fn an_evicted_module_is_refilled_through_the_supervisor() {
    let cache = TestCache::new();
    let generation = cache.put(WORKSPACE);
    let src = "from shared import open_ticket\n\ndef run():\n    return open_ticket('Q R')\n";
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &redis_url_for_tests(), mode);
        // Evicted, and a new generation so the template reloads and sees the hole.
        cache.evict(&["shared/tickets.py"]);
        let g = cache.bump();
        let run = run_at(&mut w, &cache, g, exec("miss", src), |req| {
            assert_eq!(req.op, "module_miss");
            let args: serde_json::Value = serde_json::from_str(&req.args_json).unwrap();
            assert_eq!(args, json!({"path": "shared/tickets.py"}));
            // The supervisor re-caches it from the database.
            let content = WORKSPACE
                .iter()
                .find(|(p, _)| *p == "shared/tickets.py")
                .unwrap();
            cache.put(&[*content]);
            ok_reply("{}")
        });
        assert_eq!(run.value(), json!({"title": "q-r"}), "{mode}");
        assert_eq!(run.requests.len(), 1, "{mode}");
        let _ = generation;
    }
}

#[test]
fn an_evicted_module_the_supervisor_cannot_refill_is_module_not_found() {
    let cache = TestCache::new();
    cache.put(WORKSPACE);
    let mut w = start(&cache, &redis_url_for_tests(), "fork");
    cache.evict(&["tools/text/case.py"]);
    let g = cache.bump();
    let src = "import tools.text.case\n\ndef run():\n    pass\n";
    let run = run_at(&mut w, &cache, g, exec("gone", src), |_| {
        ReplyOutcome::Err {
            message: "no module tools/text/case.py in the database".into(),
        }
    });
    let f = run.failure();
    assert_eq!(f.error_type, "ModuleNotFoundError", "{f:?}");
    assert!(f.message.contains("'tools.text.case'"), "{f:?}");
    assert!(
        f.message
            .contains("no module tools/text/case.py in the database"),
        "{f:?}"
    );
}

#[test]
fn a_wiped_cache_is_refilled_by_the_supervisor_before_the_execution() {
    let cache = TestCache::new();
    let g1 = cache.put(WORKSPACE);
    let src = "from shared import open_ticket\n\ndef run():\n    return open_ticket('W X')\n";
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &redis_url_for_tests(), mode);
        cache.wipe();
        let mut refilled = 0;
        let run = run_at(&mut w, &cache, g1 + 1000, exec("wiped", src), |req| {
            assert_eq!(
                (req.op.as_str(), req.args_json.as_str()),
                ("module_miss", "{}")
            );
            assert_eq!(req.request_id, 0, "the template's own request");
            cache.put(WORKSPACE);
            refilled += 1;
            ok_reply("{}")
        });
        assert_eq!(run.value(), json!({"title": "w-x"}), "{mode}");
        assert_eq!(refilled, 1);
        assert_eq!(
            run.kinds[0], "Request",
            "{mode}: asked before starting: {:?}",
            run.kinds
        );
    }
}

#[test]
fn an_unreadable_cache_fails_workspace_imports_instead_of_running_old_code() {
    let cache = TestCache::new();
    let g1 = cache.put(WORKSPACE);
    let proxy = CountingProxy::start();
    let src = "import shared\n\ndef run():\n    return shared.VERSION\n";
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &proxy.url, mode);
        assert_eq!(
            run_at(&mut w, &cache, g1, exec("ok", src), no_requests).value(),
            json!(1)
        );
    }
    let mut w = start(&cache, &proxy.url, "fork");
    assert_eq!(
        run_at(&mut w, &cache, g1, exec("ok2", src), no_requests).value(),
        json!(1)
    );
    // Redis becomes unreachable for the worker: the next generation cannot be loaded.
    proxy.refuse_connections();
    let g2 = cache.put(&[("shared/__init__.py", "VERSION = 2\n")]);
    let run = run_at(&mut w, &cache, g2, exec("stale", src), no_requests);
    let f = run.failure();
    assert_eq!(f.error_type, "ImportError", "{f:?}");
    assert!(
        f.message.contains("module cache could not be read"),
        "{f:?}"
    );
    // Names outside the workspace are unaffected.
    let plain = "import json\n\ndef run():\n    return 1\n";
    let run = run_at(&mut w, &cache, g2, exec("plain", plain), no_requests);
    assert_eq!(run.value(), json!(1));
}

#[test]
fn reuse_mode_drops_workspace_modules_after_each_execution() {
    let cache = TestCache::new();
    let g = cache.put(&[("state.py", "CALLS = []\n")]);
    let src =
        "import state, sys\n\ndef run():\n    state.CALLS.append(1)\n    return len(state.CALLS)\n";
    let mut w = start(&cache, &redis_url_for_tests(), "reuse");
    for i in 0..3 {
        let run = run_at(&mut w, &cache, g, exec(&format!("r{i}"), src), no_requests);
        assert_eq!(run.value(), json!(1), "a fresh module every execution");
    }
}

#[test]
fn a_cached_copy_that_does_not_match_the_manifest_is_never_run() {
    let cache = TestCache::new();
    cache.put(WORKSPACE);
    let src = "from shared import util\n\ndef run():\n    return util.slug('A B')\n";
    let evil = "import os\nos.environ['PWNED'] = '1'\n\ndef slug(s):\n    return 'pwned'\n";
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &redis_url_for_tests(), mode);
        let g = cache.put(&[]);
        assert_eq!(
            run_at(&mut w, &cache, g, exec("before", src), no_requests).value(),
            json!("a-b")
        );
        // An attacker rewrites content and hash and bumps the generation; then a push of
        // another module makes the template read what changed, and a fresh template
        // reads everything.
        let g = cache.tamper("shared/util.py", evil);
        let g = cache
            .put(&[(
                "tools/text/case.py",
                "def up(s):\n    return s.upper() + '!'\n",
            )])
            .max(g);
        for (name, w) in [
            ("running", &mut w),
            ("fresh", &mut start(&cache, &redis_url_for_tests(), mode)),
        ] {
            let mut asked = Vec::new();
            let run = run_at(w, &cache, g, exec("after", src), |req| {
                asked.push(req.args_json.clone());
                ok_reply(r#"{"generation": 1, "repaired": true}"#)
            });
            let f = run.failure();
            assert_eq!(f.error_type, "ImportError", "{mode} {name}: {f:#?}");
            assert!(
                f.message
                    .contains("the cached copy of shared/util.py does not match the workspace")
                    && f.message.contains("the supervisor was asked to repair it"),
                "{mode} {name}: {f:#?}"
            );
            if name == "fresh" {
                assert_eq!(
                    asked,
                    vec![r#"{"path":"shared/util.py","mismatch":true}"#.to_string()],
                    "{mode}"
                );
            }
            // Nothing of the attacker's ran, and the rest of the workspace still imports.
            let check = "import os\nimport tools.text.case as c\n\ndef run():\n    return [os.environ.get('PWNED'), c.up('x')]\n";
            let run = run_at(w, &cache, g, exec("rest", check), no_requests);
            assert_eq!(run.value(), json!([null, "X!"]), "{mode} {name}");
        }
        // Repaired (what the supervisor does): the next generation imports the real one.
        let g = cache.put(&[WORKSPACE[2]]);
        assert_eq!(
            run_at(&mut w, &cache, g, exec("repaired", src), no_requests).value(),
            json!("a-b"),
            "{mode}"
        );
    }
}

#[test]
fn a_miss_answered_with_other_content_is_never_run() {
    let cache = TestCache::new();
    cache.put(WORKSPACE);
    let src = "import tools.text.case\n\ndef run():\n    return tools.text.case.up('a')\n";
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &redis_url_for_tests(), mode);
        cache.evict(&["tools/text/case.py"]);
        let g = cache.bump();
        let mut asked = Vec::new();
        let run = run_at(&mut w, &cache, g, exec("miss", src), |req| {
            asked.push(req.args_json.clone());
            ok_reply(
                r#"{"generation": 1, "content": "def up(s):\n    return 'pwned'\n", "hash": "x"}"#,
            )
        });
        let f = run.failure();
        assert_eq!(f.error_type, "ImportError", "{mode}: {f:#?}");
        assert!(f.message.contains("does not match the workspace"), "{f:#?}");
        assert_eq!(
            asked.len(),
            2,
            "{mode}: the miss, then the mismatch: {asked:?}"
        );
        assert!(asked[1].contains("\"mismatch\":true"), "{asked:?}");
        cache.put(&[WORKSPACE[3]]);
    }
}

#[test]
fn only_the_manifest_paths_are_importable() {
    let cache = TestCache::new();
    let g = cache.put(WORKSPACE);
    // Written to Redis (index and content) without the supervisor: not in the manifest.
    cache.tamper("json/__init__.py", "def dumps(x):\n    return 'pwned'\n");
    cache.tamper("injected.py", "X = 'pwned'\n");
    let src = "import json\n\ndef run():\n    try:\n        import injected\n    except ImportError:\n        return json.dumps([1])\n    return injected.X\n";
    for mode in ["fork", "reuse"] {
        let mut w = start(&cache, &redis_url_for_tests(), mode);
        assert_eq!(
            run_at(&mut w, &cache, g, exec("inj", src), no_requests).value(),
            json!("[1]"),
            "{mode}"
        );
    }
}

#[test]
fn an_execute_without_its_manifest_fails_workspace_imports() {
    let cache = TestCache::new();
    let g = cache.put(WORKSPACE);
    let mut w = start(&cache, &redis_url_for_tests(), "fork");
    w.send(&ToWorker::Modules(cache.manifest()));
    let mut e = exec("nomanifest", "import shared\n\ndef run():\n    pass\n");
    e.modules_generation = g;
    e.modules_manifest = 42;
    let run = w.execute_answering(e, no_requests);
    let f = run.failure();
    assert!(
        f.message
            .contains("was not sent the workspace's module hashes"),
        "{f:#?}"
    );
}

/// Timings for the report (printed; asserted only loosely, debug builds are slow):
/// a declined lookup, and a fresh import through the finder.
#[test]
fn finder_costs() {
    let cache = TestCache::new();
    let mut modules: Vec<(String, String)> = (0..10)
        .map(|i| {
            (
                format!("bench/m{i}.py"),
                format!("def f(x):\n    return x + {i}\n"),
            )
        })
        .collect();
    modules.push(("bench/__init__.py".into(), String::new()));
    let refs: Vec<(&str, &str)> = modules
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let g = cache.put(&refs);
    let src = r#"
import sys, time, importlib

def run():
    finder = sys.meta_path[0]
    n = 100000
    t = time.perf_counter()
    for _ in range(n):
        finder.find_spec("json", None, None)
    decline_us = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n // 10):
        finder.find_spec("bench.m1", None, None)
    spec_us = (time.perf_counter() - t) / (n // 10) * 1e6
    t = time.perf_counter()
    importlib.import_module("bench")
    for i in range(10):
        importlib.import_module(f"bench.m{i}")
    first_us = (time.perf_counter() - t) / 11 * 1e6
    t = time.perf_counter()
    for i in range(10):
        del sys.modules[f"bench.m{i}"]
        importlib.import_module(f"bench.m{i}")
    again_us = (time.perf_counter() - t) / 10 * 1e6
    # For comparison: ten small standard-library modules, imported from disk (.pyc).
    stdlib = ["colorsys", "bisect", "fnmatch", "glob", "keyword", "numbers", "shlex", "sched", "stringprep", "tabnanny"]
    t = time.perf_counter()
    for name in stdlib:
        importlib.import_module(name)
    stdlib_us = (time.perf_counter() - t) / len(stdlib) * 1e6
    return {
        "stdlib_import_us": stdlib_us,
        "decline_us": decline_us,
        "find_spec_us": spec_us,
        "import_us": first_us,
        "reimport_us": again_us,
        "finder": repr(finder),
    }
"#;
    let mut w = start(&cache, &redis_url_for_tests(), "fork");
    let run = run_at(&mut w, &cache, g, exec("cost", src), no_requests);
    let v = run.value();
    eprintln!("finder costs: {v}");
    assert!(v["decline_us"].as_f64().unwrap() < 50.0, "{v}");
    assert!(v["import_us"].as_f64().unwrap() < 5000.0, "{v}");
}

fn redis_url_for_tests() -> String {
    common::redis_cache::redis_url()
}
