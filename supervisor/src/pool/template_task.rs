//! One task per template process (the supervisor's side of it; the worker crate's
//! `template` is the process itself): it owns the `Child` and its [`TemplateSocket`],
//! so it is the only code that signals or reaps the template — a kill always happens
//! before the reap, never after, so a recycled pid can never be hit.
//!
//! Started by the pool's driver on the dispatcher's `Action::Spawn`. It answers the
//! handshake itself, forwards every later frame to the dispatcher, and reports once,
//! with the exit status, when the process is gone. Anything odd on the socket
//! (garbage, an oversized frame, a second hello) kills the template: the dispatcher
//! then fails only the execution it was running and starts a new one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use warden_protocol::{FromWorker, Hello, ToWorker, Welcome, PROTOCOL_VERSION};

use super::config::PoolConfig;
use super::spawn::spawn_template;
use super::template_socket::TemplateSocket;

/// From the dispatcher to a template task.
#[derive(Debug)]
pub enum TemplateCmd {
    Send(Box<ToWorker>),
    /// SIGKILL the template's whole process group.
    Kill,
}

/// From a template task to the dispatcher. `slot` and `generation` say which template.
#[derive(Debug)]
pub enum TemplateEvent {
    Ready {
        slot: usize,
        generation: u64,
        hello: Hello,
        spawn_to_ready: Duration,
    },
    Frame {
        slot: usize,
        generation: u64,
        msg: FromWorker,
    },
    Gone {
        slot: usize,
        generation: u64,
        /// Whether it had said hello (a template that never did is a start failure).
        was_ready: bool,
        reason: String,
        exit_code: Option<i32>,
        exit_signal: Option<i32>,
    },
}

/// Spawns the template for `slot` and runs until it is gone.
pub async fn run(
    cfg: Arc<PoolConfig>,
    slot: usize,
    generation: u64,
    packages: Option<Arc<std::path::PathBuf>>,
    events: mpsc::UnboundedSender<TemplateEvent>,
    mut cmds: mpsc::UnboundedReceiver<TemplateCmd>,
) {
    let gone = |reason: String, code, signal, was_ready| TemplateEvent::Gone {
        slot,
        generation,
        was_ready,
        reason,
        exit_code: code,
        exit_signal: signal,
    };
    let started = Instant::now();
    let worker_id = ((slot as u64) << 32) | (generation & 0xffff_ffff);
    let spawned = match spawn_template(
        &cfg,
        slot,
        worker_id,
        packages.as_deref().map(|p| p.as_path()),
    ) {
        Ok(s) => s,
        Err(e) => {
            let _ = events.send(gone(e.to_string(), None, None, false));
            return;
        }
    };
    let pgid = spawned.pid;
    let mut child = spawned.child;
    let mut socket = TemplateSocket::new(spawned.socket, cfg.max_frame);
    let mut ready = false;
    let mut open = true;
    let mut kill_reason: Option<String> = None;
    let start_deadline = tokio::time::sleep(cfg.start_timeout);
    tokio::pin!(start_deadline);

    // Only called before `child.wait()` has returned (same task), so `pgid` is still ours.
    let kill = |why: String, kill_reason: &mut Option<String>| {
        if kill_reason.is_none() {
            *kill_reason = Some(why);
        }
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    };

    loop {
        tokio::select! {
            status = child.wait() => {
                use std::os::unix::process::ExitStatusExt;
                let (code, signal, what) = match status {
                    Ok(s) => (s.code(), s.signal(), s.to_string()),
                    Err(e) => (None, None, format!("wait failed: {e}")),
                };
                let reason = match kill_reason {
                    Some(why) => format!("{why} ({what})"),
                    None => format!("worker process ended unexpectedly ({what})"),
                };
                let _ = events.send(gone(reason, code, signal, ready));
                return;
            }
            frame = socket.read(), if open => match frame {
                Ok(Some(FromWorker::Hello(hello))) if !ready => {
                    let accepted = hello.protocol_version == PROTOCOL_VERSION;
                    let reason = (!accepted).then(|| format!(
                        "supervisor speaks protocol {PROTOCOL_VERSION}, worker speaks {}: rebuild both from the same source",
                        hello.protocol_version
                    ));
                    let welcome = ToWorker::Welcome(Welcome { protocol_version: PROTOCOL_VERSION, accepted, reason: reason.clone() });
                    if let Err(e) = socket.write(&welcome).await {
                        kill(format!("handshake failed: {e}"), &mut kill_reason);
                    } else if let Some(r) = reason {
                        kill(r, &mut kill_reason);
                    } else {
                        ready = true;
                        let _ = events.send(TemplateEvent::Ready { slot, generation, hello, spawn_to_ready: started.elapsed() });
                    }
                }
                Ok(Some(msg)) if ready => {
                    let _ = events.send(TemplateEvent::Frame { slot, generation, msg });
                }
                Ok(Some(other)) => kill(format!("protocol error: unexpected {} before hello", other.kind()), &mut kill_reason),
                Ok(None) => {
                    open = false;
                    kill("worker closed its connection".into(), &mut kill_reason);
                }
                Err(e) => {
                    open = false;
                    tracing::warn!(slot, error = %e, "garbage from worker; killing it");
                    kill(format!("protocol error: {e}"), &mut kill_reason);
                }
            },
            cmd = cmds.recv() => match cmd {
                Some(TemplateCmd::Send(msg)) => {
                    if let Err(e) = socket.write(&msg).await {
                        kill(format!("cannot write to worker: {e}"), &mut kill_reason);
                    }
                }
                Some(TemplateCmd::Kill) => kill("killed by the supervisor".into(), &mut kill_reason),
                None => kill("pool shut down".into(), &mut kill_reason),
            },
            _ = &mut start_deadline, if !ready => {
                kill(format!("no hello within {:?} of start", cfg.start_timeout), &mut kill_reason);
            }
        }
    }
}
