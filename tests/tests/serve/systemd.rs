//! systemd's notify protocol, as a `Type=notify` unit with `WatchdogSec=` sees it: the
//! real `warden serve` binary with `NOTIFY_SOCKET` naming a datagram socket this test
//! owns, and `WATCHDOG_USEC` set. `READY=1` comes only once the supervisor serves
//! (its `/readyz` is already 200 then), `WATCHDOG=1` pings follow at half the
//! interval, and SIGTERM sends `STOPPING=1`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;
use warden_tests::db::TestDb;
use warden_tests::http::{free_addr, get};
use warden_tests::pool::{unique_uid_base, warden_bin, worker_bin};
use warden_tests::redis::TestRedis;
use warden_tests::serve::sigterm;

/// The next datagram, as text; panics after `within`.
async fn next(sock: &UnixDatagram, within: Duration, log: &Path) -> String {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(within, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(e)) => panic!("recv: {e}"),
        Err(_) => panic!(
            "no notification within {within:?}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

fn serve(db: &TestDb, redis: &TestRedis, notify: &Path, http: &str, log: &Path) -> Child {
    let mut cmd = Command::new(warden_bin());
    cmd.args([
        "serve",
        "--workers",
        "2",
        "--consumer",
        "sd",
        "--http",
        http,
    ])
    .args(["--drain-timeout", "2s"])
    .arg("--worker-bin")
    .arg(worker_bin())
    .env("DATABASE_URL", &db.url)
    .env("REDIS_URL", &redis.url)
    .env("WARDEN_KEY_PREFIX", &redis.prefix)
    .env("NOTIFY_SOCKET", notify)
    // 1 s: pings every 500 ms.
    .env("WATCHDOG_USEC", "1000000")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(log).unwrap());
    match unique_uid_base() {
        Some(b) => cmd.arg("--worker-uid-base").arg(b.to_string()),
        None => cmd.arg("--worker-uid-base").arg("0"),
    };
    cmd.spawn().expect("start warden serve")
}

#[tokio::test]
async fn ready_after_start_up_then_watchdog_pings_then_stopping() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    let log = dir.path().join("serve.log");
    let addr = free_addr();
    let mut child = serve(&db, &redis, &notify, &addr.to_string(), &log);

    // Nothing but READY=1 (with its status) comes first, and the supervisor serves by
    // then: its readiness check passes at once.
    let first = next(&sock, Duration::from_secs(30), &log).await;
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines, ["READY=1", "STATUS=serving"], "{first}");
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));

    // Watchdog pings at about half of WATCHDOG_USEC.
    let t = Instant::now();
    let mut pings = 0;
    while pings < 4 {
        let m = next(&sock, Duration::from_secs(2), &log).await;
        assert_eq!(m.trim_end(), "WATCHDOG=1", "{m}");
        pings += 1;
    }
    let took = t.elapsed();
    // The first may come at once (the interval's first tick); the next three take
    // about 1.5 s.
    assert!(
        took >= Duration::from_millis(1_200) && took < Duration::from_secs(4),
        "{pings} pings in {took:?}"
    );

    // SIGTERM: STOPPING=1 (pings may still be interleaved while it drains).
    sigterm(&child);
    let t = Instant::now();
    loop {
        let m = next(&sock, Duration::from_secs(5), &log).await;
        if m.lines().next() == Some("STOPPING=1") {
            assert!(m.contains("STATUS=draining"), "{m}");
            break;
        }
        assert_eq!(m.trim_end(), "WATCHDOG=1", "{m}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn without_notify_socket_nothing_is_sent_and_serve_runs() {
    // The in-process daemon of every other test runs without NOTIFY_SOCKET; this one
    // checks the binary the same way: no socket named, it starts and stops cleanly.
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let addr = free_addr();
    let mut cmd = Command::new(warden_bin());
    cmd.args(["serve", "--workers", "1", "--consumer", "nosd", "--http"])
        .arg(addr.to_string())
        .arg("--worker-bin")
        .arg(worker_bin())
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", &redis.url)
        .env("WARDEN_KEY_PREFIX", &redis.prefix)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    match unique_uid_base() {
        Some(b) => cmd.arg("--worker-uid-base").arg(b.to_string()),
        None => cmd.arg("--worker-uid-base").arg("0"),
    };
    let mut child = cmd.spawn().unwrap();
    warden_tests::http::wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "{status}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("could not notify systemd"), "{log}");
    assert!(!log.contains("watchdog"), "{log}");
}
