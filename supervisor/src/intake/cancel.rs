//! Cancel requests.
//!
//! A cancel is two things, written together by [`request_cancel`]:
//! - a marker key `warden:cancelled:<id>` that lives for a day ([`CANCEL_TTL`]), for an
//!   execution still queued in the stream (or about to be reclaimed): the supervisor
//!   checks a batch's markers with [`is_cancelled`] (one `MGET`) before dispatching it,
//!   and records those executions `cancelled` without running them;
//! - a `PUBLISH` of the id on `warden:cancel`, for an execution already running: the
//!   [`CancelListener`] passes it to whoever owns the pool, which kills it.
//!
//! The marker is written first, so anyone who sees the notice also sees the marker.
//! Pub/sub is lossy across a reconnect: after one, the listener yields
//! [`CancelSignal::Resubscribed`], and the owner should re-check the markers of what
//! it is running.

use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionLike, PubSubSink, PubSubStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::keys::Keys;
use super::request::{check_execution_id, MAX_ID_LEN};
use super::IntakeError;
use crate::outcome::ExecutionId;

/// How long a cancel marker lives.
pub const CANCEL_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How often the listener pings its connection, to notice a silently dead one.
const PING_INTERVAL: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Cancels buffered for a slow consumer before the listener waits for it.
const CHANNEL_CAPACITY: usize = 1024;

/// Asks for `execution_id` to be cancelled, whether it is queued or running (one
/// pipeline: `SET … EX` + `PUBLISH`).
pub async fn request_cancel<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    execution_id: &str,
) -> Result<(), IntakeError> {
    check_id(execution_id)?;
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(keys.cancelled(execution_id))
        .arg(1)
        .arg("EX")
        .arg(CANCEL_TTL.as_secs())
        .ignore();
    pipe.cmd("PUBLISH")
        .arg(keys.cancel_channel())
        .arg(execution_id)
        .ignore();
    pipe.query_async::<()>(conn).await.map_err(|e| {
        IntakeError::redis(format!("requesting cancel of execution {execution_id}"), e)
    })
}

/// For each id, whether a cancel was requested for it (one `MGET`).
pub async fn is_cancelled<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    execution_ids: &[impl AsRef<str>],
) -> Result<Vec<bool>, IntakeError> {
    if execution_ids.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = execution_ids
        .iter()
        .map(|id| keys.cancelled(id.as_ref()))
        .collect();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(&names)
        .query_async(conn)
        .await
        .map_err(|e| {
            IntakeError::redis(
                format!("checking {} executions for cancel requests", names.len()),
                e,
            )
        })?;
    Ok(values.into_iter().map(|v| v.is_some()).collect())
}

/// What the [`CancelListener`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelSignal {
    /// Cancel this execution.
    Cancel(ExecutionId),
    /// The subscription was lost and is back: notices published in between were
    /// missed, so re-check running executions with [`is_cancelled`].
    Resubscribed,
}

/// Listens on the cancel channel on a connection of its own and yields
/// [`CancelSignal`]s. Reconnects with back-off when the connection drops. Dropping
/// the listener stops it.
#[derive(Debug)]
pub struct CancelListener {
    rx: mpsc::Receiver<CancelSignal>,
    task: JoinHandle<()>,
}

impl CancelListener {
    /// Subscribes, and returns once Redis has confirmed the subscription: every cancel
    /// published after this returns is seen.
    pub async fn start(client: redis::Client, keys: &Keys) -> Result<CancelListener, IntakeError> {
        let channel = keys.cancel_channel();
        let (sink, stream) = subscribe(&client, &channel).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let task = tokio::spawn(listen(client, channel, tx, sink, stream));
        Ok(CancelListener { rx, task })
    }

    /// The next signal; `None` only if the listener task ended (it does not on its own).
    pub async fn recv(&mut self) -> Option<CancelSignal> {
        self.rx.recv().await
    }

    /// A signal if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<CancelSignal> {
        self.rx.try_recv().ok()
    }
}

impl Drop for CancelListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<(PubSubSink, PubSubStream), IntakeError> {
    let context = || format!("subscribing to cancel requests on `{channel}`");
    let attempt = async {
        let pubsub = client.get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(channel).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, attempt).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(IntakeError::redis(context(), e)),
        Err(_) => Err(IntakeError::TimedOut {
            context: context(),
            after: SUBSCRIBE_TIMEOUT,
        }),
    }
}

/// The listener task: forward notices; on a lost connection, resubscribe with back-off.
/// Ends when the receiving side is gone.
async fn listen(
    client: redis::Client,
    channel: String,
    tx: mpsc::Sender<CancelSignal>,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
) {
    loop {
        if !forward(&tx, &mut sink, &mut stream).await {
            return;
        }
        tracing::warn!(%channel, "lost the cancel subscription; resubscribing");
        let mut delay = Duration::from_millis(100);
        loop {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(delay).await;
            match subscribe(&client, &channel).await {
                Ok((new_sink, new_stream)) => {
                    sink = new_sink;
                    stream = new_stream;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot resubscribe to cancel requests");
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
        tracing::info!(%channel, "resubscribed to cancel requests");
        if tx.send(CancelSignal::Resubscribed).await.is_err() {
            return;
        }
    }
}

/// Forwards notices until the connection is lost (returns `true`) or nobody listens
/// any more (returns `false`). Pings now and then so a silently dead connection is
/// noticed too.
async fn forward(
    tx: &mpsc::Sender<CancelSignal>,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
) -> bool {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return true };
                let payload = msg.get_payload_bytes();
                match std::str::from_utf8(payload).ok().filter(|id| check_id(id).is_ok()) {
                    Some(id) => {
                        tracing::debug!(execution_id = id, "cancel requested");
                        if tx.send(CancelSignal::Cancel(id.into())).await.is_err() {
                            return false;
                        }
                    }
                    None => tracing::warn!(
                        payload = %String::from_utf8_lossy(&payload[..payload.len().min(200)]),
                        "ignoring cancel notice that is not an execution id"
                    ),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cancel subscription ping failed");
                        return true;
                    }
                    Err(_) => {
                        tracing::warn!("cancel subscription ping timed out");
                        return true;
                    }
                }
            }
            _ = tx.closed() => return false,
        }
    }
}

fn check_id(id: &str) -> Result<(), IntakeError> {
    check_execution_id(id).map_err(|reason| IntakeError::InvalidExecutionId {
        id: id.chars().take(MAX_ID_LEN + 1).collect(),
        reason,
    })
}
