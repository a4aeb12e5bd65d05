//! What a function's outcome turns into, in fork mode: the Result of each kind of
//! success and failure, always followed by Ended with the child's exit.

mod common;

use common::*;
use serde_json::json;
use warden_protocol::ExitKind;

#[test]
fn sync_function_returns_its_value_as_json() {
    let mut w = Worker::start();
    let e = with_params(
        exec("sync", "def run(x):\n    return {\"y\": x * 2}\n"),
        r#"{"x": 21}"#,
    );
    let run = w.execute(e);
    assert_eq!(run.value(), json!({"y": 42}));
    assert_eq!(run.kinds, ["Started", "Result", "Ended"]);
    assert_eq!(run.exit(), &ExitKind::Exited(0));
    let started = run.started.as_ref().unwrap();
    assert_ne!(started.pid as i32, w.pid(), "fork mode runs in a child");
}

#[test]
fn async_function_is_run_to_completion() {
    let mut w = Worker::start();
    let src =
        "import asyncio\n\nasync def run(n):\n    await asyncio.sleep(0.01)\n    return n + 1\n";
    let run = w.execute(with_params(exec("async", src), r#"{"n": 1}"#));
    assert_eq!(run.value(), json!(2));
}

#[test]
fn a_returned_awaitable_is_awaited() {
    let mut w = Worker::start();
    let src = "async def later():\n    return 'done'\n\ndef run():\n    return later()\n";
    assert_eq!(w.execute(exec("awaitable", src)).value(), json!("done"));
}

#[test]
fn exception_reports_type_message_and_a_traceback_starting_in_the_workflow() {
    let mut w = Worker::start();
    let src = "def helper(x):\n    raise ValueError(f'bad value {x}')\n\n\ndef run(x):\n    return helper(x)\n";
    let mut e = with_params(exec("boom", src), r#"{"x": 7}"#);
    e.path = "flows/boom.py".into();
    let run = w.execute(e);
    let err = run.failure();
    assert_eq!(err.error_type, "ValueError");
    assert_eq!(err.message, "bad value 7");
    let tb = &err.traceback;
    assert!(
        tb.starts_with(
            "Traceback (most recent call last):\n  File \"flows/boom.py\", line 6, in run\n"
        ),
        "{tb}"
    );
    assert!(
        tb.contains("File \"flows/boom.py\", line 2, in helper"),
        "{tb}"
    );
    assert!(
        tb.contains("raise ValueError(f'bad value {x}')"),
        "source line shown: {tb}"
    );
    assert!(!tb.contains("warden-runner"), "runner frames are cut: {tb}");
    assert_eq!(run.exit(), &ExitKind::Exited(0));
}

#[test]
fn exceptions_from_library_modules_are_qualified_by_module() {
    let mut w = Worker::start();
    let src = "import json\n\ndef run():\n    return json.loads('not json')\n";
    let run = w.execute(exec("qualified", src));
    assert_eq!(run.failure().error_type, "json.decoder.JSONDecodeError");
}

#[test]
fn exceptions_defined_by_the_workflow_are_named_without_internal_module() {
    let mut w = Worker::start();
    let src = "class Nope(Exception):\n    pass\n\ndef run():\n    raise Nope('no')\n";
    assert_eq!(w.execute(exec("own", src)).failure().error_type, "Nope");
}

#[test]
fn async_exception_traceback_starts_in_the_workflow_not_asyncio() {
    let mut w = Worker::start();
    let src = "async def run():\n    raise KeyError('k')\n";
    let run = w.execute(exec("async-boom", src));
    let err = run.failure();
    assert_eq!(err.error_type, "KeyError");
    assert!(
        err.traceback.starts_with(
            "Traceback (most recent call last):\n  File \"flows/test.py\", line 2, in run"
        ),
        "{}",
        err.traceback
    );
}

#[test]
fn system_exit_becomes_a_failure_not_a_silent_exit() {
    let mut w = Worker::start();
    let src = "import sys\n\ndef run():\n    sys.exit(4)\n";
    let run = w.execute(exec("sysexit", src));
    assert_eq!(run.failure().error_type, "SystemExit");
    assert_eq!(run.failure().message, "4");
    assert_eq!(run.exit(), &ExitKind::Exited(0));
}

#[test]
fn syntax_error_names_the_path_and_line() {
    let mut w = Worker::start();
    let mut e = exec("syntax", "import os\n\ndef run(:\n    pass\n");
    e.path = "flows/x.py".into();
    let run = w.execute(e);
    let err = run.failure();
    assert_eq!(err.error_type, "SyntaxError");
    assert_eq!(err.message, "invalid syntax (flows/x.py, line 3)");
    assert!(
        err.traceback.contains("File \"flows/x.py\", line 3"),
        "{}",
        err.traceback
    );
    assert!(err.traceback.contains("def run(:"), "{}", err.traceback);
}

#[test]
fn missing_function_lists_the_functions_defined() {
    let mut w = Worker::start();
    let mut e = exec(
        "missing",
        "def main():\n    pass\n\ndef helper():\n    pass\n",
    );
    e.path = "flows/x.py".into();
    let run = w.execute(e);
    let err = run.failure();
    assert_eq!(err.error_type, "FunctionNotFound");
    assert_eq!(
        err.message,
        "flows/x.py defines no function 'run' (functions defined: main, helper)"
    );
}

#[test]
fn a_name_that_is_not_callable_is_not_a_function() {
    let mut w = Worker::start();
    let run = w.execute(exec("notcallable", "run = 3\n"));
    let err = run.failure();
    assert_eq!(err.error_type, "FunctionNotFound");
    assert!(err.message.contains("'run' is a int"), "{}", err.message);
}

#[test]
fn params_that_are_not_an_object_are_invalid() {
    let mut w = Worker::start();
    let run = w.execute(with_params(trivial("array"), "[1, 2]"));
    let err = run.failure();
    assert_eq!(err.error_type, "InvalidParams");
    assert!(
        err.message.contains("must be a JSON object"),
        "{}",
        err.message
    );
    assert!(err.message.contains("array"), "{}", err.message);
}

#[test]
fn params_that_are_not_json_are_invalid() {
    let mut w = Worker::start();
    let run = w.execute(with_params(trivial("notjson"), "{oops"));
    let err = run.failure();
    assert_eq!(err.error_type, "InvalidParams");
    assert!(err.message.contains("not valid JSON"), "{}", err.message);
}

#[test]
fn a_missing_argument_is_an_ordinary_type_error() {
    let mut w = Worker::start();
    let run = w.execute(exec("binding", "def run(x):\n    return x\n"));
    let err = run.failure();
    assert_eq!(err.error_type, "TypeError");
    assert!(
        err.message
            .contains("missing 1 required positional argument: 'x'"),
        "{}",
        err.message
    );
}

#[test]
fn a_set_result_is_not_serializable() {
    let mut w = Worker::start();
    let run = w.execute(exec("set", "def run():\n    return {1, 2}\n"));
    let err = run.failure();
    assert_eq!(err.error_type, "ResultNotSerializable");
    assert_eq!(
        err.message,
        "the return value of run() is not JSON-serializable: Object of type set is not JSON serializable"
    );
}

#[test]
fn nan_is_not_serializable() {
    let mut w = Worker::start();
    let run = w.execute(exec("nan", "def run():\n    return float('nan')\n"));
    assert_eq!(run.failure().error_type, "ResultNotSerializable");
}

#[test]
fn a_result_over_max_result_bytes_is_too_large_with_both_sizes() {
    let mut w = Worker::start();
    let e = with_limits(exec("big", "def run():\n    return 'x' * 2000\n"), |l| {
        l.max_result_bytes = 1000
    });
    let run = w.execute(e);
    let err = run.failure();
    assert_eq!(err.error_type, "ResultTooLarge");
    assert!(err.message.contains("2002 bytes"), "{}", err.message);
    assert!(err.message.contains("1000 bytes"), "{}", err.message);
}

#[test]
fn duration_covers_the_call() {
    let mut w = Worker::start();
    let run = w.execute(exec(
        "slow",
        "import time\n\ndef run():\n    time.sleep(0.05)\n",
    ));
    assert_eq!(run.value(), json!(null));
    let d = run.result.as_ref().unwrap().duration_us;
    assert!((50_000..5_000_000).contains(&d), "{d}");
}
