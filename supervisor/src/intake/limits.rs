//! Concurrency limits in Redis: the mirror of the limits stored in PostgreSQL
//! (`workflows.max_concurrency`, `organizations.max_concurrency`), the release of
//! permits when entries are acknowledged, and the running counts `warden status` shows.
//!
//! **The mirror** is one hash, `warden:limits`, holding what the take script
//! (`take.lua`) needs to find an entry's limits from its raw `org` and `workflow`
//! fields alone:
//!
//! - `org:<org>` → N: at most N executions of the organization at once;
//! - `wf:#<id>` → `N` or `N <org>`: the workflow's limit (0: none), and its organization
//!   when that has a limit (a request naming the workflow by id counts against the
//!   workflow's organization, whatever its `org` field says: that is how the supervisor
//!   records it);
//! - `wf:<len>:<org>:<name>` → `#<id>`: a workflow named with its organization (empty
//!   for a global workflow; `len` is the organization's length in bytes, so names
//!   with colons cannot be confused). A name is resolved within the request's
//!   organization only, as the supervisor does, so there is no fallback to consider.
//!
//! It is rebuilt whole, from one query, in one `MULTI` ([`publish`]), by the CLI after
//! every change and by each supervisor at start-up; an empty hash costs the take script
//! one `HLEN` and nothing else.
//!
//! **Permits.** For every entry the take script moves to the execution stream under a
//! limit, it adds the entry's stream id to `warden:running:<limit key>` (one set per
//! limit) and records `[owner, limit keys...]` at `warden:permits[<id>]`. A permit
//! counts while its owner's heartbeat exists, or while its entry is still pending in
//! the group (a dead supervisor's execution is taken over and run again: the claim
//! script hands the permit to the claimer, so the limit holds across the takeover);
//! one whose owner is dead and whose entry is pending nowhere is given back by the next
//! take that finds its limit full. Acknowledging an entry releases its permit in the
//! same pipeline ([`queue_release`]) and, when it released any, rings
//! `warden:permits:bell`, which idle takes block on: a held-back execution starts as
//! soon as a permit frees, without polling.

use std::collections::HashMap;

use super::keys::Keys;
use super::IntakeError;

/// Releases the permits of acknowledged entries. `ARGV`: permits, running base, bell,
/// then the entries' stream ids. Returns how many permits it released.
const RELEASE_SCRIPT: &str = r#"
if redis.call('HLEN', ARGV[1]) == 0 then return 0 end
local released = 0
for i = 4, #ARGV do
  local raw = redis.call('HGET', ARGV[1], ARGV[i])
  if raw then
    local permit = cjson.decode(raw)
    for k = 2, #permit do
      redis.call('SREM', ARGV[2] .. permit[k], ARGV[i])
    end
    redis.call('HDEL', ARGV[1], ARGV[i])
    released = released + 1
  end
end
if released > 0 then
  redis.call('XADD', ARGV[3], 'MAXLEN', 1, '*', 'ring', 1)
end
return released
"#;

/// The limits as stored, read by one query (crate::store::limits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Organizations with a limit, and the limit.
    pub orgs: Vec<(String, u32)>,
    /// Workflows with a limit, or whose organization has one.
    pub workflows: Vec<WorkflowLimit>,
}

/// One workflow's limit and its organization's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowLimit {
    pub id: i64,
    /// `None`: a global workflow.
    pub org: Option<String>,
    pub name: String,
    /// 0: unlimited.
    pub max: u32,
    /// Its organization's limit (0: none).
    pub org_max: u32,
}

/// The limit key of a workflow: `wf:#<id>`.
pub fn workflow_key(id: i64) -> String {
    format!("wf:#{id}")
}

/// The limit key of an organization: `org:<org>`.
pub fn org_key(org: &str) -> String {
    format!("org:{org}")
}

/// The field naming a workflow by organization and name: `wf:<len>:<org>:<name>`.
pub fn workflow_name_field(org: Option<&str>, name: &str) -> String {
    let org = org.unwrap_or("");
    format!("wf:{}:{org}:{name}", org.len())
}

/// The mirror's fields for `limits` (see the [module docs](self)).
pub fn mirror(limits: &Limits) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (org, max) in limits.orgs.iter().filter(|(_, max)| *max > 0) {
        out.push((org_key(org), max.to_string()));
    }
    for w in &limits.workflows {
        let value = match (&w.org, w.org_max) {
            (Some(org), n) if n > 0 => format!("{} {org}", w.max),
            _ if w.max > 0 => w.max.to_string(),
            _ => continue,
        };
        out.push((workflow_key(w.id), value));
        if w.max > 0 {
            out.push((
                workflow_name_field(w.org.as_deref(), &w.name),
                format!("#{}", w.id),
            ));
        }
    }
    out
}

/// Replaces the mirror with `limits` in one `MULTI` (`DEL`, `HSET`), and rings the
/// permits' bell so that work a lowered or removed limit held back is looked at again.
/// Returns how many limits are set.
pub async fn publish<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    limits: &Limits,
) -> Result<usize, IntakeError> {
    let fields = mirror(limits);
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("DEL").arg(keys.limits()).ignore();
    if !fields.is_empty() {
        pipe.cmd("HSET").arg(keys.limits()).arg(&fields).ignore();
    }
    super::lanes::ring(&mut pipe, &keys.permits_bell());
    pipe.query_async::<()>(conn).await.map_err(|e| {
        IntakeError::redis(
            format!("publishing the concurrency limits to `{}`", keys.limits()),
            e,
        )
    })?;
    Ok(limits.orgs.iter().filter(|(_, m)| *m > 0).count()
        + limits.workflows.iter().filter(|w| w.max > 0).count())
}

impl super::Intake {
    /// [`publish`] on this supervisor's connection (at start-up).
    pub async fn publish_limits(&self, limits: &Limits) -> Result<usize, IntakeError> {
        self.count(1, 3);
        publish(&mut self.writer_conn(), self.keys(), limits).await
    }
}

/// Adds the release of `stream_ids`' permits to `pipe` (one `EVAL`, a no-op when no
/// permit is held anywhere): for the acknowledgement pipeline.
pub(crate) fn queue_release(pipe: &mut redis::Pipeline, keys: &Keys, stream_ids: &[&str]) {
    if stream_ids.is_empty() {
        return;
    }
    pipe.cmd("EVAL")
        .arg(RELEASE_SCRIPT)
        .arg(0)
        .arg(keys.permits())
        .arg(keys.running_base())
        .arg(keys.permits_bell())
        .arg(stream_ids)
        .ignore();
}

/// One limit as `warden status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitUsage {
    /// `wf:#<id>` or `org:<org>`.
    pub key: String,
    /// For a workflow: `<org>/<name>` or `<name>` (when the mirror names it).
    pub label: String,
    pub max: u32,
    /// Permits held (executions running or about to, including a dead supervisor's
    /// not yet taken over).
    pub running: u64,
}

/// Every limit set, with the permits held under it, most used first (two round trips:
/// the mirror, then one `SCARD` per limit).
pub async fn usage<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Vec<LimitUsage>, IntakeError> {
    let context = || "reading the concurrency limits".to_owned();
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.limits())
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis(context(), e))?;
    let mut names: HashMap<String, String> = HashMap::new();
    for (field, value) in &fields {
        if let Some(rest) = field.strip_prefix("wf:").filter(|r| !r.starts_with('#')) {
            // `<len>:<org>:<name>`
            if let Some((len, rest)) = rest.split_once(':') {
                if let Some(len) = len.parse::<usize>().ok().filter(|l| *l < rest.len()) {
                    let (org, name) = (&rest[..len], &rest[len + 1..]);
                    let label = if org.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{org}/{name}")
                    };
                    names.insert(format!("wf:{value}"), label);
                }
            }
        }
    }
    let mut limits: Vec<LimitUsage> = fields
        .iter()
        .filter_map(|(field, value)| {
            let max: u32 = value.split(' ').next()?.parse().ok()?;
            if max == 0 {
                return None;
            }
            let label = if let Some(org) = field.strip_prefix("org:") {
                format!("organization {org}")
            } else if field.starts_with("wf:#") {
                format!(
                    "workflow {}",
                    names
                        .get(field)
                        .cloned()
                        .unwrap_or_else(|| field[3..].to_owned())
                )
            } else {
                return None;
            };
            Some(LimitUsage {
                key: field.clone(),
                label,
                max,
                running: 0,
            })
        })
        .collect();
    if limits.is_empty() {
        return Ok(limits);
    }
    let mut pipe = redis::pipe();
    for l in &limits {
        pipe.cmd("SCARD").arg(keys.running(&l.key));
    }
    let counts: Vec<u64> = pipe
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis(context(), e))?;
    for (l, n) in limits.iter_mut().zip(counts) {
        l.running = n;
    }
    limits.sort_by(|a, b| {
        let share = |l: &LimitUsage| l.running as f64 / l.max as f64;
        share(b)
            .total_cmp(&share(a))
            .then(b.running.cmp(&a.running))
            .then(a.key.cmp(&b.key))
    });
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_names_workflows_by_id_and_by_name_and_orgs_by_name() {
        let limits = Limits {
            orgs: vec![("acme".into(), 5), ("idle".into(), 0)],
            workflows: vec![
                WorkflowLimit {
                    id: 7,
                    org: Some("acme".into()),
                    name: "report".into(),
                    max: 2,
                    org_max: 5,
                },
                WorkflowLimit {
                    id: 8,
                    org: Some("acme".into()),
                    name: "free".into(),
                    max: 0,
                    org_max: 5,
                },
                WorkflowLimit {
                    id: 9,
                    org: None,
                    name: "global".into(),
                    max: 3,
                    org_max: 0,
                },
                WorkflowLimit {
                    id: 10,
                    org: None,
                    name: "nothing".into(),
                    max: 0,
                    org_max: 0,
                },
            ],
        };
        let fields: HashMap<String, String> = mirror(&limits).into_iter().collect();
        let expected: HashMap<String, String> = [
            ("org:acme", "5"),
            ("wf:#7", "2 acme"),
            ("wf:4:acme:report", "#7"),
            ("wf:#8", "0 acme"),
            ("wf:#9", "3"),
            ("wf:0::global", "#9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(fields, expected);
    }

    #[test]
    fn organization_names_with_colons_stay_apart() {
        assert_ne!(
            workflow_name_field(Some("a:b"), "c"),
            workflow_name_field(Some("a"), "b:c")
        );
    }
}
