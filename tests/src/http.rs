//! A minimal HTTP/1.1 client for the tests of `serve --http` (one GET per connection,
//! `Connection: close`), a free local port to serve on, and reading one sample out of
//! an OpenMetrics exposition.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port of 127.0.0.1 free a moment ago (bound, read, released).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap()
}

/// `GET path` on `addr`: the status code and the body. Panics if nothing answers
/// within 5 s.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// [`get`], with a refused connection (nothing listening yet) as an error.
pub async fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let raw = String::from_utf8(raw).expect("utf-8 reply");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        Ok((code, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {addr}: no answer within 5 s"))
}

/// `GET path` every 100 ms until its status is `code` (a refused connection counts as
/// not yet); the body then. Panics with the last answer after `within`.
pub async fn wait_for_status(addr: SocketAddr, path: &str, code: u16, within: Duration) -> String {
    let t = Instant::now();
    loop {
        let (got, body) = match try_get(addr, path).await {
            Ok((got, body)) => (got.to_string(), body),
            Err(e) => (e.to_string(), String::new()),
        };
        if got == code.to_string() {
            return body;
        }
        assert!(
            t.elapsed() < within,
            "GET {path} still {got} after {within:?} (waiting for {code}): {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the sample named exactly `series` (name and labels as exposed, e.g.
/// `warden_workers{state="busy"}`), or `None` when absent.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}
