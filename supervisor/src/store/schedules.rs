//! Cron schedules in PostgreSQL: `warden schedule add|list|show|pause|resume|rm|run`,
//! and [`Store::fire_schedules`], which turns due ticks into executions for the
//! due-work poller (crate::serve::due).
//!
//! Firing is ONE transaction per batch of due schedules: their rows are locked
//! (`FOR UPDATE SKIP LOCKED`, so two supervisors firing at once take different
//! schedules), each due tick is inserted as a `scheduled` execution with the tick's
//! deterministic id (crate::schedule::execution_id; `ON CONFLICT DO NOTHING`), and
//! `next_tick_at` moves past them, all committed together. A tick therefore becomes at
//! most one execution whatever the number of supervisors, and exactly one unless the
//! catch-up policy skips it; the poller then starts it like any due execution.

use chrono::{DateTime, Utc};

use crate::schedule::{self, CatchUp, CronSpec};
use crate::store::{Store, StoreError};

/// A schedule as `warden schedule list|show` prints it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ScheduleRow {
    pub name: String,
    pub workflow: String,
    pub org: Option<String>,
    pub cron: String,
    pub tz: String,
    pub params: String,
    pub catch_up: String,
    pub paused: bool,
    pub next_tick_at: DateTime<Utc>,
    pub last_tick_at: Option<DateTime<Utc>>,
}

/// What `warden schedule add` stores.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    pub name: String,
    pub workflow_id: i64,
    pub cron: String,
    pub tz: String,
    pub params_json: String,
    pub catch_up: CatchUp,
}

#[derive(sqlx::FromRow)]
struct DueSchedule {
    id: i64,
    name: String,
    cron: String,
    tz: String,
    catch_up: String,
    next_tick_at: DateTime<Utc>,
    params: String,
    workflow_id: i64,
    workflow_name: String,
    org_id: Option<i64>,
}

const ROW: &str = "SELECT s.name, w.name AS workflow, o.name AS org, s.cron, s.tz, \
                   s.params::text AS params, s.catch_up, s.paused, s.next_tick_at, s.last_tick_at \
                   FROM schedules s JOIN workflows w ON w.id = s.workflow_id \
                   LEFT JOIN organizations o ON o.id = w.org_id";

impl Store {
    /// Stores a new schedule, its first tick the first after now.
    pub async fn add_schedule(&self, s: &NewSchedule) -> Result<(), StoreError> {
        schedule::check_name(&s.name).map_err(|reason| StoreError::Invalid {
            what: "schedule",
            reason,
        })?;
        let spec = CronSpec::parse(&s.cron, &s.tz).map_err(|reason| StoreError::Invalid {
            what: "schedule",
            reason,
        })?;
        let first = spec
            .next_after(Utc::now())
            .ok_or_else(|| StoreError::Invalid {
                what: "schedule",
                reason: format!("`{}` never fires", s.cron),
            })?;
        sqlx::query(
            "INSERT INTO schedules (name, workflow_id, cron, tz, params, catch_up, next_tick_at)
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)",
        )
        .bind(&s.name)
        .bind(s.workflow_id)
        .bind(&s.cron)
        .bind(&s.tz)
        .bind(&s.params_json)
        .bind(s.catch_up.as_str())
        .bind(first)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("add the schedule"))?;
        Ok(())
    }

    pub async fn list_schedules(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        sqlx::query_as(&format!("{ROW} ORDER BY s.name"))
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("list schedules"))
    }

    pub async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>, StoreError> {
        sqlx::query_as(&format!("{ROW} WHERE s.name = $1"))
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::query("read the schedule"))
    }

    /// Pauses or resumes a schedule; a resumed one's next tick is the first after now
    /// (ticks while paused are not caught up). Whether it exists.
    pub async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool, StoreError> {
        let Some(row) = self.schedule(name).await? else {
            return Ok(false);
        };
        let next = match paused {
            true => row.next_tick_at,
            false => CronSpec::parse(&row.cron, &row.tz)
                .ok()
                .and_then(|s| s.next_after(Utc::now()))
                .unwrap_or(row.next_tick_at),
        };
        let done =
            sqlx::query("UPDATE schedules SET paused = $2, next_tick_at = $3 WHERE name = $1")
                .bind(name)
                .bind(paused)
                .bind(next)
                .execute(self.pool())
                .await
                .map_err(StoreError::query("pause or resume the schedule"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a schedule (its executions stay). Whether it existed.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM schedules WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(StoreError::query("remove the schedule"))?;
        Ok(done.rows_affected() == 1)
    }

    /// `warden schedule run NAME`: one execution of it now, outside its ticks. Its id,
    /// or `None` when there is no such schedule.
    pub async fn run_schedule_now(&self, name: &str) -> Result<Option<String>, StoreError> {
        let id = format!("schedule:{name}:run-{}", uuid::Uuid::new_v4().simple());
        let done = sqlx::query(
            "INSERT INTO executions (id, workflow_id, workflow_name, org_id, caller, status,
                                     params, queued_at, next_attempt_at)
             SELECT $2, w.id, w.name, w.org_id, 'schedule:' || s.name, 'scheduled',
                    s.params, now(), now()
             FROM schedules s JOIN workflows w ON w.id = s.workflow_id
             WHERE s.name = $1",
        )
        .bind(name)
        .bind(&id)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("run the schedule now"))?;
        Ok((done.rows_affected() == 1).then_some(id))
    }

    /// Whether any schedule has a due tick (one indexed read; the poller asks this
    /// before opening a transaction to fire them).
    pub async fn schedules_due(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM schedules WHERE NOT paused AND next_tick_at <= now())",
        )
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::query("look for due schedules"))
    }

    /// Fires the due ticks of up to `limit` schedules at `now`, in ONE transaction (see
    /// the module docs). Returns how many executions it created.
    pub async fn fire_schedules(&self, now: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(StoreError::query("begin firing schedules"))?;
        let due: Vec<DueSchedule> = sqlx::query_as(
            "SELECT s.id, s.name, s.cron, s.tz, s.catch_up, s.next_tick_at,
                    s.params::text AS params, s.workflow_id, w.name AS workflow_name, w.org_id
             FROM schedules s JOIN workflows w ON w.id = s.workflow_id
             WHERE NOT s.paused AND s.next_tick_at <= $1
             ORDER BY s.next_tick_at
             LIMIT $2
             FOR UPDATE OF s SKIP LOCKED",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::query("lock the due schedules"))?;
        if due.is_empty() {
            tx.rollback().await.ok();
            return Ok(0);
        }
        let (mut ids, mut wf_ids, mut wf_names, mut orgs, mut callers, mut params, mut ticks) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut sched_ids, mut nexts, mut lasts, mut stops) = (vec![], vec![], vec![], vec![]);
        for d in &due {
            let (fire, next) = match (
                CronSpec::parse(&d.cron, &d.tz),
                d.catch_up.parse::<CatchUp>(),
            ) {
                (Ok(spec), Ok(catch_up)) => schedule::due(&spec, d.next_tick_at, now, catch_up),
                // Stored by an older build or edited by hand: stop it, say why.
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(schedule = %d.name, error = %e, "schedule cannot be evaluated; pausing it");
                    (Vec::new(), None)
                }
            };
            for tick in &fire {
                ids.push(schedule::execution_id(&d.name, *tick));
                wf_ids.push(d.workflow_id);
                wf_names.push(d.workflow_name.clone());
                orgs.push(d.org_id);
                callers.push(format!("schedule:{}", d.name));
                params.push(d.params.clone());
                ticks.push(*tick);
            }
            sched_ids.push(d.id);
            stops.push(next.is_none());
            nexts.push(next.unwrap_or(d.next_tick_at));
            lasts.push(fire.last().copied());
        }
        let inserted = sqlx::query(
            "INSERT INTO executions (id, workflow_id, workflow_name, org_id, caller, status,
                                     params, queued_at, next_attempt_at)
             SELECT id, workflow_id, workflow_name, org_id, caller, 'scheduled',
                    params::jsonb, tick, tick
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
                         $6::text[], $7::timestamptz[])
                 AS t(id, workflow_id, workflow_name, org_id, caller, params, tick)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&wf_ids)
        .bind(&wf_names)
        .bind(&orgs)
        .bind(&callers)
        .bind(&params)
        .bind(&ticks)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("insert the schedules' executions"))?
        .rows_affected();
        sqlx::query(
            "UPDATE schedules s SET next_tick_at = u.next,
                                    last_tick_at = COALESCE(u.last, s.last_tick_at),
                                    paused = s.paused OR u.stop
             FROM UNNEST($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::bool[])
                 AS u(id, next, last, stop)
             WHERE s.id = u.id",
        )
        .bind(&sched_ids)
        .bind(&nexts)
        .bind(&lasts)
        .bind(&stops)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("move the schedules on"))?;
        tx.commit()
            .await
            .map_err(StoreError::query("commit the fired schedules"))?;
        Ok(inserted)
    }
}
