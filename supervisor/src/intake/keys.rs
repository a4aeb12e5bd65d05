//! Every Redis key and channel name the intake uses, built in one place from one prefix.
//!
//! Production runs with the empty prefix, so the names are exactly the ones in
//! `DESIGN.md` (`warden:executions`, ...). Tests give each test its own prefix
//! (`t:<hex>:`) so they run in parallel against one shared Redis without seeing each
//! other's streams, groups, channels or markers, and can delete everything they made
//! with one `SCAN MATCH <prefix>*`.

/// The consumer group every supervisor joins. Not prefixed: it lives *inside* the
/// (prefixed) stream key, so it cannot collide across prefixes.
pub const GROUP: &str = "warden";

/// Key and channel names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix`, which is prepended verbatim (`"t:1f2e:"`, not `"t:1f2e"`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The production names (empty prefix).
    pub fn production() -> Self {
        Keys::default()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The execution request stream: `{prefix}warden:executions`.
    pub fn stream(&self) -> String {
        format!("{}warden:executions", self.prefix)
    }

    /// The consumer group on [`Keys::stream`].
    pub fn group(&self) -> &'static str {
        GROUP
    }

    /// Rejected stream entries, with the reason: `{prefix}warden:executions:dead`.
    pub fn dead_letters(&self) -> String {
        format!("{}warden:executions:dead", self.prefix)
    }

    /// Pub/sub channel carrying the one completion message of an execution:
    /// `{prefix}warden:execution:<id>`.
    pub fn completion_channel(&self, execution_id: &str) -> String {
        format!("{}warden:execution:{execution_id}", self.prefix)
    }

    /// A string key holding the same completion message for a while after it was
    /// published, so a client that subscribes late still learns the outcome:
    /// `{prefix}warden:execution:<id>:completion`.
    pub fn completion_key(&self, execution_id: &str) -> String {
        format!("{}warden:execution:{execution_id}:completion", self.prefix)
    }

    /// A Redis stream holding an execution's log lines as they happen, so a client
    /// attaching mid-run reads the lines so far, then waits for more (`XREAD`):
    /// `{prefix}warden:execution:<id>:logs`. It expires [`crate::intake::stream`]'s
    /// `LIVE_LOG_TTL` after the last line, and a minute after the completion.
    pub fn log_stream(&self, execution_id: &str) -> String {
        format!("{}warden:execution:{execution_id}:logs", self.prefix)
    }

    /// A string key saying that a worker started an execution's attempt, and when
    /// ([`crate::intake::messages::StartMark`]): `{prefix}warden:execution:<id>:started`.
    /// Its row says `running` with no `started_at` from the moment a supervisor takes
    /// it until its result is committed, so this key is what tells "queued on that
    /// supervisor" from "running since T" meanwhile. It expires with the attempt's
    /// deadline (plus a minute).
    pub fn start_mark(&self, execution_id: &str) -> String {
        format!("{}warden:execution:{execution_id}:started", self.prefix)
    }

    /// Pub/sub channel of cancel requests; the payload is an execution id:
    /// `{prefix}warden:cancel`.
    pub fn cancel_channel(&self) -> String {
        format!("{}warden:cancel", self.prefix)
    }

    /// The marker that an execution was cancelled: `{prefix}warden:cancelled:<id>`.
    ///
    /// One string key per execution rather than one set or hash: Redis 7.0 cannot
    /// expire single members or fields, and a marker must expire on its own (a day
    /// later) without anyone pruning it. Checking a whole batch is still one `MGET`.
    pub fn cancelled(&self, execution_id: &str) -> String {
        format!("{}warden:cancelled:{execution_id}", self.prefix)
    }

    /// One supervisor's status (JSON, short TTL): `{prefix}warden:supervisor:<consumer>`.
    pub fn supervisor_status(&self, consumer: &str) -> String {
        format!("{}warden:supervisor:{consumer}", self.prefix)
    }

    /// One config scope's cached values (`global` or `org:<id>`), as JSON with the
    /// generation it was filled at: `{prefix}warden:config:<scope>`. Filled from the
    /// database by the supervisor (crate::sdk::cache), expiring on its own.
    pub fn config_cache(&self, scope: &str) -> String {
        format!("{}warden:config:{scope}", self.prefix)
    }

    /// Hash of config generations, one field per scope: `{prefix}warden:config:generations`.
    /// Bumped after every committed config change; a cached scope whose generation is not
    /// the current one is a miss. Never expires (it is a few bytes per organization).
    pub fn config_generations(&self) -> String {
        format!("{}warden:config:generations", self.prefix)
    }

    /// One workspace module's cached source: a hash `{content, hash}` at
    /// `{prefix}warden:module:<path>` (crate::modules::cache). Workers read it; only the
    /// supervisor writes it.
    pub fn module(&self, path: &str) -> String {
        format!("{}warden:module:{path}", self.prefix)
    }

    /// The set of every cached module path: `{prefix}warden:module:index`.
    pub fn module_index(&self) -> String {
        format!("{}warden:module:index", self.prefix)
    }

    /// The module cache's generation (a number, changed on every change the supervisor
    /// makes to the cache; missing = the cache was wiped): `{prefix}warden:module:generation`.
    pub fn module_generation(&self) -> String {
        format!("{}warden:module:generation", self.prefix)
    }

    /// One supervisor's heartbeat (a token, short TTL): `{prefix}warden:heartbeat:<consumer>`.
    /// Present while the supervisor lives; peers take over the pending entries of a
    /// consumer whose heartbeat is gone (crate::intake::liveness).
    pub fn heartbeat(&self, consumer: &str) -> String {
        format!("{}warden:heartbeat:{consumer}", self.prefix)
    }

    /// The common start of one queue's keys: `{prefix}warden:queue:<queue>:`
    /// (crate::intake::lanes; its script builds the names below from it, too).
    pub fn queue_base(&self, queue: &str) -> String {
        format!("{}warden:queue:{queue}:", self.prefix)
    }

    /// One queue's lane of one organization, a stream of requests waiting to be taken:
    /// `{prefix}warden:queue:<queue>:org:<org>` (`org:` alone for no organization).
    pub fn lane(&self, queue: &str, org: Option<&str>) -> String {
        format!("{}org:{}", self.queue_base(queue), org.unwrap_or(""))
    }

    /// The organizations with requests waiting in a queue (a sorted set, all scores 0):
    /// `{prefix}warden:queue:<queue>:orgs`.
    pub fn queue_orgs(&self, queue: &str) -> String {
        format!("{}orgs", self.queue_base(queue))
    }

    /// A stream of one entry, added to with every submission to the queue, that idle
    /// supervisors block on: `{prefix}warden:queue:<queue>:bell`.
    pub fn queue_bell(&self, queue: &str) -> String {
        format!("{}bell", self.queue_base(queue))
    }

    /// The names of every queue submitted to: `{prefix}warden:queues`.
    pub fn queues(&self) -> String {
        format!("{}warden:queues", self.prefix)
    }

    /// The concurrency limits, mirrored from PostgreSQL (crate::intake::limits): a hash
    /// `org:<org>` → N, `wf:#<id>` → `N[ <org>]`, `wf:<len>:<org>:<name>` → `#<id>`:
    /// `{prefix}warden:limits`.
    pub fn limits(&self) -> String {
        format!("{}warden:limits", self.prefix)
    }

    /// Who holds which permits: a hash, main stream entry id → `[owner, limit key, ...]`
    /// (JSON): `{prefix}warden:permits`.
    pub fn permits(&self) -> String {
        format!("{}warden:permits", self.prefix)
    }

    /// A stream of one entry, added to whenever permits are released or the limits
    /// change, that idle supervisors block on: `{prefix}warden:permits:bell`.
    pub fn permits_bell(&self) -> String {
        format!("{}warden:permits:bell", self.prefix)
    }

    /// The common start of the running sets (the scripts append the limit key):
    /// `{prefix}warden:running:`.
    pub fn running_base(&self) -> String {
        format!("{}warden:running:", self.prefix)
    }

    /// The main stream entries holding a permit of one limit (`wf:#<id>`, `org:<org>`):
    /// `{prefix}warden:running:<limit key>`.
    pub fn running(&self, limit: &str) -> String {
        format!("{}{limit}", self.running_base())
    }

    /// The set of consumer names that have published a status: `{prefix}warden:supervisors`.
    /// Members whose status key has expired are stale and pruned by readers.
    pub fn supervisors(&self) -> String {
        format!("{}warden:supervisors", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_names_match_the_design() {
        let k = Keys::production();
        assert_eq!(k.stream(), "warden:executions");
        assert_eq!(k.group(), "warden");
        assert_eq!(k.dead_letters(), "warden:executions:dead");
        assert_eq!(k.completion_channel("e1"), "warden:execution:e1");
        assert_eq!(k.log_stream("e1"), "warden:execution:e1:logs");
        assert_eq!(k.cancel_channel(), "warden:cancel");
        assert_eq!(k.cancelled("e1"), "warden:cancelled:e1");
        assert_eq!(k.supervisor_status("h1"), "warden:supervisor:h1");
        assert_eq!(k.supervisors(), "warden:supervisors");
        assert_eq!(k.heartbeat("h1"), "warden:heartbeat:h1");
        // The worker builds the same names (worker/src/modules/keys.rs).
        assert_eq!(
            k.module("shared/tickets.py"),
            "warden:module:shared/tickets.py"
        );
        assert_eq!(k.module_index(), "warden:module:index");
        assert_eq!(k.module_generation(), "warden:module:generation");
        assert_eq!(k.config_cache("org:7"), "warden:config:org:7");
        assert_eq!(k.config_generations(), "warden:config:generations");
        assert_eq!(k.lane("bulk", Some("acme")), "warden:queue:bulk:org:acme");
        assert_eq!(k.lane("default", None), "warden:queue:default:org:");
        assert_eq!(k.queue_orgs("bulk"), "warden:queue:bulk:orgs");
        assert_eq!(k.queue_bell("bulk"), "warden:queue:bulk:bell");
        assert_eq!(k.queues(), "warden:queues");
        assert_eq!(k.limits(), "warden:limits");
        assert_eq!(k.permits(), "warden:permits");
        assert_eq!(k.permits_bell(), "warden:permits:bell");
        assert_eq!(k.running("wf:#7"), "warden:running:wf:#7");
    }

    #[test]
    fn prefix_is_prepended_to_every_name() {
        let k = Keys::new("t:ab:");
        for name in [
            k.stream(),
            k.dead_letters(),
            k.completion_channel("x"),
            k.completion_key("x"),
            k.log_stream("x"),
            k.cancel_channel(),
            k.cancelled("x"),
            k.supervisor_status("x"),
            k.supervisors(),
            k.heartbeat("x"),
            k.module("a.py"),
            k.module_index(),
            k.module_generation(),
            k.config_cache("global"),
            k.config_generations(),
            k.lane("q", Some("o")),
            k.queue_orgs("q"),
            k.queue_bell("q"),
            k.queues(),
            k.limits(),
            k.permits(),
            k.permits_bell(),
            k.running("org:o"),
        ] {
            assert!(name.starts_with("t:ab:warden:"), "{name}");
        }
    }
}
