//! Fair intake: named queues, one *lane* per queue and organization, and the script
//! that hands a supervisor the next entries in turn ([`Intake::take`]).
//!
//! One FIFO stream let an organization that submitted 100,000 executions delay
//! everybody else's by as long as those took. Now a client adds a request to its lane,
//! a stream per queue and organization (`warden:queue:<queue>:org:<org>`), notes the
//! organization in the queue's sorted set of organizations with work waiting
//! (`warden:queue:<queue>:orgs`), and rings the queue's bell (`warden:queue:<queue>:bell`,
//! a stream trimmed to one entry), all in the one pipeline that used to be one `XADD`
//! ([`add_all`]). A supervisor takes work with one script call (`take.lua`) that,
//! atomically:
//!
//! 1. reads what was added to the execution stream directly (clients that predate
//!    queues, tests), which is served first and in order;
//! 2. for each queue the supervisor serves, in priority order (`serve --queues`), moves
//!    entries from the organizations' lanes to the execution stream in turn: a cursor per
//!    queue, shared by every supervisor, starts each call at the next organization, and
//!    the places the supervisor has free are shared evenly among the organizations with
//!    work (an organization with less than its share gives the rest to the others);
//! 3. counts what the stream now holds for the group's next read (what was there
//!    undelivered, plus what it moved), never more than the free places.
//!
//! The same pipeline's next command is this consumer's own `XREADGROUP COUNT <places>`,
//! which delivers those entries, so they are pending on it exactly as before queues.
//! (The script used to read them itself; a client's read costs Redis 2.2 µs per entry,
//! a script's 5.5: docs/architecture.md, "Costs". Between the two commands another
//! supervisor's read may deliver some of them to itself: each read still takes at most
//! its own places, and what is left is the next read's.)
//!
//! From the execution stream on nothing changed: acknowledgement after commit, takeover
//! of a dead supervisor's pending entries, the sweeper, cancel markers, duplicates. The
//! stream now holds only what supervisors took (plus direct entries), so a backlog waits
//! in the lanes, where every organization has its own line.
//!
//! When there is nothing to take, the script returns the last ids of the stream and of
//! the bells, and the reader blocks on them (`XREAD BLOCK`, on its own connection, as
//! before) until anything new arrives: a lone request is still taken at once.
//!
//! With concurrency limits set (crate::intake::limits), the script also skips entries
//! whose workflow or organization runs as many executions as it may: they keep their
//! place in the lane, and the script looks at most 200 entries of one lane per call.
//!
//! The supervisor's own places are shared fairly too: its pool runs queued work by queue
//! priority, then organization in turn (crate::pool::fair_queue), and while one
//! organization fills its places it still looks for others' work every
//! [`crate::serve::ServeConfig::fair_probe`] (the reader, crate::serve::prepare), skipping
//! lanes that already have enough work here.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Value;

use super::entry::{self, Entry};
use super::keys::Keys;
use super::request::ExecutionRequest;
use super::stream::{is_nogroup, millis, Intake, MAX_READ};
use super::IntakeError;

/// The queue of requests that name none.
pub const DEFAULT_QUEUE: &str = "default";
/// Longest queue name.
pub const MAX_QUEUE_LEN: usize = 64;

static TAKE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("take.lua")));

/// Checks a queue name: 1..=64 characters of `[A-Za-z0-9_.-]` (it is part of key names).
pub fn check_queue(name: &str) -> Result<&str, String> {
    if name.is_empty() || name.len() > MAX_QUEUE_LEN {
        return Err(format!(
            "queue name `{name}` must be 1 to {MAX_QUEUE_LEN} characters long"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "queue name `{name}` contains `{bad}`: use letters, digits, `_`, `.` and `-`"
        ));
    }
    Ok(name)
}

/// [`check_queue`] for clap.
pub fn parse_queue(name: &str) -> Result<String, String> {
    check_queue(name).map(str::to_owned)
}

/// Where a request waits: its queue and its organization (`None`: none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    pub queue: String,
    pub org: Option<String>,
}

impl Lane {
    pub fn of(request: &ExecutionRequest) -> Lane {
        Lane {
            queue: request.queue_name().to_owned(),
            org: request.org.clone(),
        }
    }

    /// The lane an entry names, read leniently from its raw fields (an entry that does
    /// not parse is rejected later; here it only needs a place in the count).
    pub fn of_entry(entry: &Entry) -> Lane {
        let field = |name: &[u8]| {
            entry
                .fields
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Lane {
            queue: field(b"queue").unwrap_or_else(|| DEFAULT_QUEUE.to_owned()),
            org: field(b"org"),
        }
    }
}

/// One pipeline that adds every request to its lane (its reply: their lane entry ids),
/// then notes each lane's organization as waiting and rings each queue's bell once. The
/// lane's `XADD` must come before its `ZADD`: a take running in between then either
/// finds the entry or finds the organization marked again afterwards, never an entry in
/// a lane nobody looks at.
pub(crate) fn add_all(keys: &Keys, requests: &[ExecutionRequest]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    let mut lanes = BTreeSet::new();
    for request in requests {
        let lane = Lane::of(request);
        pipe.cmd("XADD")
            .arg(keys.lane(&lane.queue, lane.org.as_deref()))
            .arg("*")
            .arg(request.to_fields());
        lanes.insert(lane);
    }
    let mut queues = BTreeSet::new();
    for lane in &lanes {
        pipe.cmd("ZADD")
            .arg(keys.queue_orgs(&lane.queue))
            .arg("NX")
            .arg(0)
            .arg(lane.org.as_deref().unwrap_or(""))
            .ignore();
        queues.insert(lane.queue.as_str());
    }
    for queue in queues {
        pipe.cmd("SADD").arg(keys.queues()).arg(queue).ignore();
        ring(&mut pipe, &keys.queue_bell(queue));
    }
    pipe
}

/// Adds one entry to a bell (a stream trimmed to its last entry) that idle takes block
/// on: a queue's, or the permits' (crate::intake::limits).
pub(crate) fn ring(pipe: &mut redis::Pipeline, bell: &str) {
    pipe.cmd("XADD")
        .arg(bell)
        .arg("MAXLEN")
        .arg(1)
        .arg("*")
        .arg("ring")
        .arg(1)
        .ignore();
}

/// One pipeline that adds every request to the execution stream itself, first come
/// first served, as before queues existed (what `bench --workload fairness` compares
/// with).
pub(crate) fn add_all_fifo(keys: &Keys, requests: &[ExecutionRequest]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for request in requests {
        pipe.cmd("XADD")
            .arg(keys.stream())
            .arg("*")
            .arg(request.to_fields());
    }
    pipe
}

/// What waits in one lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneDepth {
    pub lane: Lane,
    pub waiting: u64,
}

/// Every lane with work waiting, deepest first: two pipelines (the queues and their
/// organizations, then one `XLEN` per lane).
pub(crate) async fn depths<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Vec<LaneDepth>, IntakeError> {
    let context = || "reading the queues' depths".to_owned();
    let queues: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.queues())
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis(context(), e))?;
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for queue in &queues {
        pipe.cmd("ZRANGE")
            .arg(keys.queue_orgs(queue))
            .arg(0)
            .arg(-1);
    }
    let orgs: Vec<Vec<String>> = pipe
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis(context(), e))?;
    let lanes: Vec<Lane> = queues
        .iter()
        .zip(orgs)
        .flat_map(|(queue, orgs)| {
            orgs.into_iter().map(|org| Lane {
                queue: queue.clone(),
                org: (!org.is_empty()).then_some(org),
            })
        })
        .collect();
    if lanes.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for lane in &lanes {
        pipe.cmd("XLEN")
            .arg(keys.lane(&lane.queue, lane.org.as_deref()));
    }
    let lens: Vec<u64> = pipe
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis(context(), e))?;
    let mut out: Vec<LaneDepth> = lanes
        .into_iter()
        .zip(lens)
        .filter(|(_, n)| *n > 0)
        .map(|(lane, waiting)| LaneDepth { lane, waiting })
        .collect();
    out.sort_by(|a, b| b.waiting.cmp(&a.waiting).then(a.lane.cmp(&b.lane)));
    Ok(out)
}

impl Intake {
    /// Takes up to `max` entries for this consumer: direct entries of the stream first,
    /// then the lanes of `queues` (in priority order), organizations in turn, skipping
    /// the lanes in `skip`. When there is nothing, waits up to `block` for anything new
    /// (`Duration::ZERO`: don't wait) and tries once more. The entries become pending on
    /// this consumer until acknowledged.
    pub async fn take(
        &self,
        max: usize,
        queues: &[String],
        skip: &[Lane],
        block: Duration,
    ) -> Result<Vec<Entry>, IntakeError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = max.min(MAX_READ);
        let (entries, wake) = self.take_once(max, queues, skip, !block.is_zero()).await?;
        if !entries.is_empty() || block.is_zero() || wake.is_empty() {
            return Ok(entries);
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(millis(block).max(1))
            .arg("STREAMS");
        for (key, _) in &wake {
            cmd.arg(key);
        }
        for (_, id) in &wake {
            cmd.arg(id);
        }
        // Only a wake-up: what arrived is taken by the next script call.
        self.send_read(&cmd, block)
            .await?
            .map_err(|e| IntakeError::redis(self.taking_context(), e))?;
        Ok(self.take_once(max, queues, skip, false).await?.0)
    }

    /// One round trip: the take script (which moves the lanes' entries to the stream)
    /// and, right after it in the same pipeline, this consumer's `XREADGROUP`, which
    /// delivers them. Returns the entries and, when there were none and `wake` asked for
    /// them, the ids to block on.
    async fn take_once(
        &self,
        max: usize,
        queues: &[String],
        skip: &[Lane],
        wake: bool,
    ) -> Result<(Vec<Entry>, Vec<(String, String)>), IntakeError> {
        let keys = self.keys();
        let mut script = redis::cmd("EVALSHA");
        script
            .arg(TAKE.get_hash())
            .arg(0)
            .arg(keys.stream())
            .arg(keys.group())
            .arg(self.consumer())
            .arg(max)
            .arg(queues.len());
        for queue in queues {
            script.arg(keys.queue_base(queue));
        }
        script.arg(skip.len());
        for lane in skip {
            script.arg(keys.lane(&lane.queue, lane.org.as_deref()));
        }
        script
            .arg(keys.limits())
            .arg(keys.permits())
            .arg(keys.running_base())
            .arg(keys.heartbeat(""))
            .arg(keys.permits_bell())
            .arg(if wake { "1" } else { "0" });
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.add_command(script);
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg(keys.group())
            .arg(self.consumer())
            .arg("COUNT")
            .arg(max)
            .arg("STREAMS")
            .arg(keys.stream())
            .arg(">");
        self.count(1, 2);
        let failed = |e| {
            self.count_error();
            IntakeError::redis(self.taking_context(), e)
        };
        let mut conn = self.writer_conn();
        let replies: Vec<redis::RedisResult<Value>> =
            pipe.query_async(&mut conn).await.map_err(failed)?;
        let unexpected = |detail: String| IntakeError::UnexpectedReply {
            context: self.taking_context(),
            detail,
        };
        let [took, read]: [redis::RedisResult<Value>; 2] = replies
            .try_into()
            .map_err(|r: Vec<_>| unexpected(format!("expected 2 replies, got {}", r.len())))?;
        let wake = match took {
            Ok(reply) => self.took(reply).map_err(unexpected)?,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis restarted or its scripts were flushed: load it for the next call.
                // What the read brought is still this consumer's; no wake ids, so a
                // blocking take calls again at once.
                self.count(1, 1);
                TAKE.prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| IntakeError::redis(self.taking_context(), e))?;
                if matches!(&read, Err(e) if is_nogroup(e)) {
                    return Ok((Vec::new(), Vec::new()));
                }
                Vec::new()
            }
            Err(e) => {
                if is_nogroup(&e) {
                    tracing::warn!("the execution stream's group vanished during a take");
                }
                // The read may have delivered entries: the caller looks for them.
                return Err(failed(e));
            }
        };
        let read = read.map_err(failed)?;
        let decoded = entry::decode_read(read).map_err(unexpected)?;
        Ok((decoded.entries, wake))
    }

    /// The script's reply: `[ready, wake ids, healed]`; returns the wake ids.
    fn took(&self, reply: Value) -> Result<Vec<(String, String)>, String> {
        let Value::Array(mut parts) = reply else {
            return Err(format!("expected an array, got {reply:?}"));
        };
        if parts.len() != 3 {
            return Err(format!("expected 3 parts, got {}", parts.len()));
        }
        if matches!(parts[2], Value::Int(1)) {
            tracing::warn!(
                stream = self.keys().stream(),
                "stream or consumer group was gone (Redis flushed or restarted?); re-created it"
            );
        }
        Ok(match parts.swap_remove(1) {
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|pair| match pair {
                    [Value::BulkString(k), Value::BulkString(id)] => Some((
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(id).into_owned(),
                    )),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
    }

    fn taking_context(&self) -> String {
        format!(
            "taking work for consumer `{}` from the queues and `{}`",
            self.consumer(),
            self.keys().stream()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_checked() {
        assert_eq!(check_queue("critical"), Ok("critical"));
        assert_eq!(check_queue("bulk-2.x_y"), Ok("bulk-2.x_y"));
        assert!(check_queue("").unwrap_err().contains("1 to 64"));
        assert!(check_queue(&"q".repeat(65))
            .unwrap_err()
            .contains("1 to 64"));
        let e = check_queue("a:b").unwrap_err();
        assert!(e.contains("`:`"), "{e}");
        assert!(check_queue("a b").is_err());
    }

    #[test]
    fn an_entrys_lane_comes_from_its_fields() {
        let entry = |fields: &[(&str, &str)]| Entry {
            stream_id: "1-0".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        };
        assert_eq!(
            Lane::of_entry(&entry(&[("id", "x"), ("org", "acme"), ("queue", "bulk")])),
            Lane {
                queue: "bulk".into(),
                org: Some("acme".into())
            }
        );
        assert_eq!(
            Lane::of_entry(&entry(&[("id", "x"), ("org", "")])),
            Lane {
                queue: DEFAULT_QUEUE.into(),
                org: None
            }
        );
    }

    #[test]
    fn the_pipeline_adds_to_lanes_then_marks_them_then_rings_once_per_queue() {
        let keys = Keys::new("t:");
        let mut a = ExecutionRequest::new("a1", crate::intake::WorkflowRef::Id(1));
        a.org = Some("a".into());
        let mut b = ExecutionRequest::new("b1", crate::intake::WorkflowRef::Id(1));
        b.queue = Some("critical".into());
        let a2 = ExecutionRequest {
            execution_id: "a2".into(),
            ..a.clone()
        };
        let pipe = add_all(&keys, &[a, b, a2]);
        let cmds: Vec<String> = pipe
            .cmd_iter()
            .map(|c| {
                c.args_iter()
                    .take(2)
                    .map(|arg| match arg {
                        redis::Arg::Simple(s) => String::from_utf8_lossy(s).into_owned(),
                        _ => "<other>".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            cmds,
            [
                "XADD t:warden:queue:default:org:a",
                "XADD t:warden:queue:critical:org:",
                "XADD t:warden:queue:default:org:a",
                "ZADD t:warden:queue:critical:orgs",
                "ZADD t:warden:queue:default:orgs",
                "SADD t:warden:queues",
                "XADD t:warden:queue:critical:bell",
                "SADD t:warden:queues",
                "XADD t:warden:queue:default:bell",
            ]
        );
    }
}
