//! `warden schedule add|list|show|pause|resume|rm|run`: cron schedules. Each tick of a
//! schedule becomes one execution of its workflow (id `schedule:<name>:<tick>`), fired
//! by whichever supervisor's due-work poller gets to it first (crate::store::schedules),
//! so a tick runs once however many supervisors there are.

use clap::Subcommand;

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::schedule::{CatchUp, CronSpec};
use crate::store::schedules::NewSchedule;
use crate::store::{StoreError, WorkflowKey};

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Add a schedule: run WORKFLOW at every tick of a cron expression.
    Add {
        /// The schedule's name (A-Z a-z 0-9 _ . -, at most 80).
        name: String,
        /// The workflow to run (name, or numeric id).
        #[arg(long)]
        workflow: String,
        /// When: `MIN HOUR DAY MONTH WEEKDAY` (`0 7 * * 1-5`), or with a leading
        /// seconds field (`*/10 * * * * *`).
        #[arg(long)]
        cron: String,
        /// The time zone the expression is read in (IANA name, `Europe/Berlin`).
        /// A time that does not exist that day fires when the gap ends; one that
        /// exists twice fires at its first occurrence.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Params of every execution, a JSON object.
        #[arg(long, default_value = "{}")]
        params: String,
        /// The workflow's organization.
        #[arg(long)]
        org: Option<String>,
        /// Ticks missed while no supervisor ran: `none` (skip them), `latest` (run the
        /// latest once), `all` (run each, at most 100).
        #[arg(long, default_value = "latest")]
        catch_up: String,
    },
    /// List schedules.
    List,
    /// One schedule.
    Show { name: String },
    /// Stop firing it (ticks while paused are not caught up).
    Pause { name: String },
    /// Fire it again from its next tick.
    Resume { name: String },
    /// Remove it (its executions stay).
    Rm { name: String },
    /// Run it once now, outside its ticks.
    Run { name: String },
}

fn not_found(name: &str) -> CliError {
    CliError::InvalidInput(format!(
        "there is no schedule {name}; `warden schedule list` shows them"
    ))
}

pub async fn run(conn: ConnArgs, cmd: ScheduleCmd) -> Result<i32, CliError> {
    let store = conn.store().await?;
    match cmd {
        ScheduleCmd::Add {
            name,
            workflow,
            cron,
            tz,
            params,
            org,
            catch_up,
        } => {
            let catch_up: CatchUp = catch_up.parse().map_err(CliError::InvalidInput)?;
            CronSpec::parse(&cron, &tz).map_err(CliError::InvalidInput)?;
            crate::schedule::check_name(&name).map_err(CliError::InvalidInput)?;
            match serde_json::from_str::<serde_json::Value>(&params) {
                Ok(serde_json::Value::Object(_)) => {}
                _ => {
                    return Err(CliError::InvalidInput(
                        "--params must be a JSON object such as '{\"x\": 1}'".into(),
                    ))
                }
            }
            let key = WorkflowKey::parse(&workflow, org.as_deref());
            let found = store.load_for_batch(std::slice::from_ref(&key)).await?;
            let Some(wf) = found.get(&key) else {
                return Err(CliError::InvalidInput(format!(
                    "no active workflow {key}; `warden workflow push` stores it"
                )));
            };
            let added = store
                .add_schedule(&NewSchedule {
                    name: name.clone(),
                    workflow_id: wf.id,
                    cron,
                    tz,
                    params_json: params,
                    catch_up,
                })
                .await;
            match added {
                Ok(()) => {}
                Err(StoreError::Query { source, .. })
                    if source
                        .as_database_error()
                        .is_some_and(|e| e.is_unique_violation()) =>
                {
                    return Err(CliError::InvalidInput(format!(
                        "a schedule named {name} exists; `warden schedule rm {name}` first"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
            let row = store
                .schedule(&name)
                .await?
                .ok_or_else(|| not_found(&name))?;
            println!("schedule {name} added; first tick {}", row.next_tick_at);
        }
        ScheduleCmd::List => {
            let rows: Vec<Vec<String>> = store
                .list_schedules()
                .await?
                .into_iter()
                .map(|s| {
                    vec![
                        s.name,
                        s.org.unwrap_or_else(|| "-".into()),
                        s.workflow,
                        s.cron,
                        s.tz,
                        s.catch_up,
                        if s.paused { "paused" } else { "active" }.into(),
                        s.next_tick_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                super::table::render(
                    &[
                        "name",
                        "org",
                        "workflow",
                        "cron",
                        "zone",
                        "catch-up",
                        "state",
                        "next tick (UTC)"
                    ],
                    &rows
                )
            );
        }
        ScheduleCmd::Show { name } => {
            let s = store
                .schedule(&name)
                .await?
                .ok_or_else(|| not_found(&name))?;
            println!("name:      {}", s.name);
            println!(
                "workflow:  {}{}",
                s.workflow,
                s.org.map(|o| format!(" (org {o})")).unwrap_or_default()
            );
            println!("cron:      {} ({})", s.cron, s.tz);
            println!("params:    {}", s.params);
            println!("catch-up:  {}", s.catch_up);
            println!("state:     {}", if s.paused { "paused" } else { "active" });
            println!("next tick: {}", s.next_tick_at);
            if let Some(t) = s.last_tick_at {
                println!("last tick: {t}");
            }
        }
        ScheduleCmd::Pause { name } => {
            if !store.set_schedule_paused(&name, true).await? {
                return Err(not_found(&name));
            }
            println!("schedule {name} paused");
        }
        ScheduleCmd::Resume { name } => {
            if !store.set_schedule_paused(&name, false).await? {
                return Err(not_found(&name));
            }
            println!("schedule {name} resumed");
        }
        ScheduleCmd::Rm { name } => {
            if !store.remove_schedule(&name).await? {
                return Err(not_found(&name));
            }
            println!("schedule {name} removed");
        }
        ScheduleCmd::Run { name } => {
            let id = store
                .run_schedule_now(&name)
                .await?
                .ok_or_else(|| not_found(&name))?;
            println!("{id}");
        }
    }
    store.close().await;
    Ok(0)
}
