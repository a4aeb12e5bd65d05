//! Output capture: print, sys.stderr and logging become Log frames, in production order,
//! numbered from 0, with the right levels, all before the Result; caps and truncation
//! keep one execution's output bounded.

mod common;

use common::*;
use warden_protocol::LogLevel::{self, *};

fn lines(run: &Run) -> Vec<(LogLevel, &str)> {
    run.logs
        .iter()
        .map(|l| (l.level, l.message.as_str()))
        .collect()
}

#[test]
fn print_stderr_and_logging_are_captured_in_order_with_levels() {
    let mut w = Worker::start();
    let src = r#"
import logging, sys

def run():
    print("out 1")
    logging.info("info via logging")
    print("err 1", file=sys.stderr)
    logging.warning("warn %d", 2)
    logging.debug("below the root level")
    logging.getLogger("app.db").error("boom")
    logging.critical("fire")
    print("two\nlines")
    return 1
"#;
    let run = w.execute(exec("order", src));
    assert_eq!(
        lines(&run),
        [
            (Info, "out 1"),
            (Info, "info via logging"),
            (Error, "err 1"),
            (Warning, "warn 2"),
            (Error, "boom"),
            (Critical, "fire"),
            (Info, "two"),
            (Info, "lines"),
        ]
    );
    let seqs: Vec<u32> = run.logs.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (0..8).collect::<Vec<_>>());
    assert_eq!(run.kinds.last(), Some(&"Ended"));
    assert_eq!(
        run.kinds[run.kinds.len() - 2],
        "Result",
        "logs precede the Result"
    );
    assert!(run
        .logs
        .windows(2)
        .all(|p| p[0].timestamp_us <= p[1].timestamp_us));
}

#[test]
fn logging_exception_includes_the_traceback_in_one_line() {
    let mut w = Worker::start();
    let src = "import logging\n\ndef run():\n    try:\n        1 / 0\n    except ZeroDivisionError:\n        logging.exception('failed')\n";
    let run = w.execute(exec("logexc", src));
    assert_eq!(run.logs.len(), 1);
    let msg = &run.logs[0].message;
    assert_eq!(run.logs[0].level, Error);
    assert!(msg.starts_with("failed\nTraceback"), "{msg}");
    assert!(msg.contains("ZeroDivisionError"), "{msg}");
}

#[test]
fn a_partial_last_line_is_flushed_at_the_end() {
    let mut w = Worker::start();
    let src = "import sys\n\ndef run():\n    sys.stdout.write('no newline')\n    print('a', end='', flush=True)\n    print('b', end='', file=sys.stderr)\n";
    let run = w.execute(exec("partial", src));
    assert_eq!(lines(&run), [(Info, "no newlinea"), (Error, "b")]);
}

#[test]
fn warnings_are_logged_as_warnings() {
    let mut w = Worker::start();
    let src = "import warnings\n\ndef run():\n    warnings.warn('careful')\n";
    let run = w.execute(exec("warn", src));
    assert_eq!(run.logs.len(), 1, "{:?}", run.logs);
    assert_eq!(run.logs[0].level, Warning);
    assert!(run.logs[0].message.contains("UserWarning: careful"));
}

#[test]
fn the_line_cap_keeps_n_lines_then_one_warning_and_counts_the_rest() {
    let mut w = Worker::start();
    let src = "def run():\n    for i in range(20):\n        print(i)\n    return 'done'\n";
    let e = with_limits(exec("cap", src), |l| l.max_log_lines = 5);
    let run = w.execute(e);
    assert_eq!(run.logs.len(), 6);
    let last = run.logs.last().unwrap();
    assert_eq!(last.level, Warning);
    assert!(
        last.message.starts_with("log limit reached (5 lines / "),
        "{}",
        last.message
    );
    assert!(last.message.ends_with("further output dropped"));
    let result = run.result.as_ref().unwrap();
    assert_eq!(result.logs_dropped, 15);
    assert_eq!(run.value(), serde_json::json!("done"));
}

#[test]
fn the_byte_cap_applies_to_message_text() {
    let mut w = Worker::start();
    let src = "def run():\n    for i in range(10):\n        print('x' * 100)\n";
    let e = with_limits(exec("bytecap", src), |l| l.max_log_bytes = 250);
    let run = w.execute(e);
    assert_eq!(run.logs.len(), 3, "two lines fit, then the warning");
    assert!(run.logs[2].message.contains("250 bytes"));
    assert_eq!(run.result.as_ref().unwrap().logs_dropped, 8);
}

#[test]
fn a_line_over_64_kib_is_truncated_and_marked() {
    let mut w = Worker::start();
    let run = w.execute(exec("long", "def run():\n    print('y' * 200000)\n"));
    assert_eq!(run.logs.len(), 1);
    let msg = &run.logs[0].message;
    assert!(msg.len() <= 64 * 1024, "{}", msg.len());
    assert!(msg.ends_with("… [truncated]"));
}

#[test]
fn bytes_written_to_stdout_buffer_are_captured() {
    let mut w = Worker::start();
    let src = "import sys\n\ndef run():\n    sys.stdout.buffer.write(b'raw \\xff bytes\\n')\n";
    let run = w.execute(exec("buffer", src));
    assert_eq!(lines(&run), [(Info, "raw \u{fffd} bytes")]);
}
