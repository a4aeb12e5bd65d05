//! A TCP proxy a test controls, to take a server away from the code under test without
//! touching the server itself (the shared PostgreSQL and Redis keep serving every other
//! test): [`Proxy::cut`] closes every connection through it and refuses new ones (each
//! accepted socket is closed at once), [`Proxy::restore`] forwards again. The test's
//! own connections go to the server directly, so it can watch what happens meanwhile.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy port");
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let target = target.to_string();
        let state = up.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut state = state.clone();
                if !*state.borrow_and_update() {
                    let _ = client.shutdown().await;
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                    // Dropping both sockets closes them.
                });
            }
        });
        Proxy { addr, up, task }
    }

    /// Closes every connection through the proxy; new ones are closed as accepted.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// `scheme://host:port` of `url` replaced by this proxy's address (the path, user
    /// and query are kept).
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let userinfo = auth.rfind('@').map(|i| &auth[..=i]).unwrap_or("");
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// `host:port` of a URL (default port `default_port`).
pub fn target_of(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split('/').next().unwrap_or(rest);
    let host = auth.rsplit('@').next().unwrap_or(auth);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    }
}
