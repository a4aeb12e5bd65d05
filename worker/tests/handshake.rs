//! Start-up and the handshake: Hello describes the template, a refused Welcome ends it
//! with exit code 2 and the reason on stderr, and a worker started without fd 3 fails
//! clearly.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use warden_protocol::frame::DEFAULT_MAX_FRAME;
use warden_protocol::{io as frame_io, FromWorker, Isolation, ToWorker, Welcome, PROTOCOL_VERSION};

#[test]
fn hello_describes_the_template() {
    let w = Worker::start_with(&Options {
        worker_id: 42,
        isolation: "reuse",
        ..Options::default()
    });
    let h = &w.hello;
    assert_eq!(h.protocol_version, PROTOCOL_VERSION);
    assert_eq!(h.worker_id, 42);
    assert_eq!(h.isolation, Isolation::Reuse);
    assert_eq!(h.pid, w.child.as_ref().unwrap().id());
    assert!(h.python_version.starts_with("3."), "{}", h.python_version);
}

#[test]
fn spawn_to_hello_is_fast() {
    // Best of a few, so a busy machine does not make this flaky.
    let best = (0..5)
        .map(|_| Worker::start().spawn_to_hello)
        .min()
        .unwrap();
    eprintln!("spawn-to-Hello (best of 5): {best:?}");
    assert!(best < Duration::from_millis(200), "{best:?}");
}

#[test]
fn a_refused_welcome_exits_2_with_the_reason_on_stderr() {
    let Spawned {
        mut child,
        mut conn,
        ..
    } = spawn(&Options::default());
    let hello = frame_io::read::<FromWorker, _>(&mut conn, DEFAULT_MAX_FRAME).unwrap();
    assert!(matches!(hello, Some(FromWorker::Hello(_))));
    frame_io::write(
        &mut conn,
        &ToWorker::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            accepted: false,
            reason: Some("too many workers".into()),
        }),
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("too many workers"), "{stderr}");
}

#[test]
fn closing_the_connection_ends_an_idle_worker_cleanly() {
    let mut w = Worker::start();
    w.conn.shutdown(std::net::Shutdown::Both).unwrap();
    let status = w.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn shutdown_ends_an_idle_worker_cleanly() {
    let mut w = Worker::start();
    w.send(&ToWorker::Shutdown);
    assert_eq!(w.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn without_a_socket_on_fd_3_the_worker_explains_and_exits_64() {
    let out = Command::new(BIN)
        .args(["--worker-id", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fd 3 is not a socket"), "{stderr}");
}

#[test]
fn bad_arguments_exit_64_with_usage() {
    let out = Command::new(BIN)
        .args(["--isolation", "threads"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}
