//! Cron schedules, the pure part: parsing an expression in a time zone (`croner`,
//! `chrono-tz`), the ticks due at a given time, what a catch-up policy fires after
//! downtime, and each tick's execution id. No clock is read here: every function takes
//! the time it works at, so the behaviour around daylight-saving transitions is unit
//! tested with fixed instants.
//!
//! Expressions have five fields (minute hour day month weekday) or six (a leading
//! seconds field). They are read on the zone's wall clock:
//! - a wall time that does not exist (the clock jumps forward, e.g. 02:30 on the last
//!   Sunday of March in Europe/Berlin) fires once that day, when the gap ends (03:00
//!   CEST), as Vixie cron does; an hourly schedule has no tick of its own in the
//!   missing hour (`0 * * * *`: 01:00 CET, then 03:00 CEST);
//! - a wall time that exists twice (the clock goes back, 02:30 on the last Sunday of
//!   October) fires once, at its first occurrence, for a fixed time such as
//!   `30 2 * * *`; a schedule with a wildcard or step in the hour field (`*/15 * * *
//!   *`, `0 * * * *`) fires in both repeated hours, since each is a distinct instant
//!   that matches.
//!
//! Each tick's execution id is `schedule:<name>:<tick in UTC, YYYYMMDDTHHMMSSZ>`, the
//! same on every supervisor, so a tick can become only one execution.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// The most missed ticks `--catch-up all` fires after downtime (the latest ones).
pub const MAX_CATCH_UP: usize = 100;
/// `--catch-up none` still fires a tick this late (a poll's delay is not downtime).
pub const ON_TIME: chrono::Duration = chrono::Duration::seconds(5);
/// Longest schedule name (ids are at most 128 bytes).
pub const MAX_NAME_LEN: usize = 80;

/// What to do with ticks missed while no supervisor ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Skip them; fire only a tick that is on time.
    None,
    /// Fire the latest missed tick once.
    Latest,
    /// Fire every missed tick (at most [`MAX_CATCH_UP`], the latest).
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
        }
    }
}

impl std::str::FromStr for CatchUp {
    type Err = String;

    fn from_str(s: &str) -> Result<CatchUp, String> {
        match s {
            "none" => Ok(CatchUp::None),
            "latest" => Ok(CatchUp::Latest),
            "all" => Ok(CatchUp::All),
            other => Err(format!("catch-up `{other}`: use none, latest or all")),
        }
    }
}

/// A parsed cron expression and its zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
}

impl CronSpec {
    /// Parses `expr` (5 or 6 fields) read in the IANA zone `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<CronSpec, String> {
        let tz: Tz = tz.parse().map_err(|_| {
            format!("unknown time zone `{tz}`: use an IANA name such as Europe/Berlin or UTC")
        })?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| format!("cron expression `{expr}`: {e}"))?;
        Ok(CronSpec { cron, tz })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|z| z.with_timezone(&Utc))
    }
}

/// What one schedule does at `now`, given its first unfired tick `next_tick`: the ticks
/// to fire (oldest first) and the new first unfired tick.
pub fn due(
    spec: &CronSpec,
    next_tick: DateTime<Utc>,
    now: DateTime<Utc>,
    catch_up: CatchUp,
) -> (Vec<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let mut ticks = Vec::new();
    let mut tick = Some(next_tick);
    // Walk the due ticks, keeping only the latest MAX_CATCH_UP (a long downtime of a
    // fine schedule must not build an unbounded list).
    let mut walked = 0usize;
    while let Some(t) = tick.filter(|t| *t <= now) {
        ticks.push(t);
        if ticks.len() > MAX_CATCH_UP {
            ticks.remove(0);
        }
        tick = spec.next_after(t);
        walked += 1;
        if walked > 1_000_000 {
            // A second-level schedule down for over ten days: jump to now.
            tick = spec.next_after(now);
            break;
        }
    }
    let fire = match catch_up {
        CatchUp::All => ticks,
        CatchUp::Latest => ticks.last().copied().into_iter().collect(),
        CatchUp::None => ticks
            .last()
            .copied()
            .filter(|t| now - *t <= ON_TIME)
            .into_iter()
            .collect(),
    };
    (fire, tick)
}

/// The execution id of `name`'s tick at `tick`.
pub fn execution_id(name: &str, tick: DateTime<Utc>) -> String {
    format!("schedule:{name}:{}", tick.format("%Y%m%dT%H%M%SZ"))
}

/// Whether `name` can name a schedule (it is part of execution ids).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a schedule name is 1 to {MAX_NAME_LEN} characters long"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "schedule name `{name}` has the character {c:?}; allowed are A-Z a-z 0-9 _ . -"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn weekday_mornings_in_berlin() {
        let spec = CronSpec::parse("0 7 * * 1-5", "Europe/Berlin").unwrap();
        // Friday 2026-12-04 08:00 Berlin (07:00 UTC): next is Monday 07:00 Berlin.
        assert_eq!(
            spec.next_after(utc("2026-12-04T07:00:00Z")),
            Some(utc("2026-12-07T06:00:00Z"))
        );
        // In summer Berlin is UTC+2.
        assert_eq!(
            spec.next_after(utc("2026-07-01T00:00:00Z")),
            Some(utc("2026-07-01T05:00:00Z"))
        );
    }

    #[test]
    fn a_time_that_does_not_exist_fires_when_the_gap_ends() {
        // 2026-03-29: Berlin jumps from 02:00 to 03:00; 02:30 does not exist.
        let spec = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let ticks: Vec<_> =
            std::iter::successors(spec.next_after(utc("2026-03-27T12:00:00Z")), |t| {
                spec.next_after(*t)
            })
            .take(3)
            .collect();
        assert_eq!(
            ticks,
            [
                utc("2026-03-28T01:30:00Z"), // 02:30 CET
                utc("2026-03-29T01:00:00Z"), // no 02:30: 03:00 CEST, the gap's end
                utc("2026-03-30T00:30:00Z"), // 02:30 CEST
            ],
            "once on the 29th, when the gap ends"
        );
        // An hourly schedule has no tick in the missing hour: 01:00 CET then 03:00 CEST.
        let hourly = CronSpec::parse("0 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            hourly.next_after(utc("2026-03-29T00:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn a_time_that_exists_twice_fires_once_and_a_wildcard_hour_fires_in_both() {
        // 2026-10-25: Berlin goes back from 03:00 CEST to 02:00 CET; 02:30 is twice.
        let spec = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let ticks: Vec<_> =
            std::iter::successors(spec.next_after(utc("2026-10-24T12:00:00Z")), |t| {
                spec.next_after(*t)
            })
            .take(2)
            .collect();
        assert_eq!(
            ticks,
            [utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")],
            "once on the 25th, at the first 02:30 (CEST)"
        );
        let quarter = CronSpec::parse("30 * * * *", "Europe/Berlin").unwrap();
        let ticks: Vec<_> =
            std::iter::successors(quarter.next_after(utc("2026-10-24T23:45:00Z")), |t| {
                quarter.next_after(*t)
            })
            .take(4)
            .collect();
        assert_eq!(
            ticks,
            [
                utc("2026-10-25T00:30:00Z"), // 02:30 CEST
                utc("2026-10-25T01:30:00Z"), // 02:30 CET
                utc("2026-10-25T02:30:00Z"), // 03:30 CET
                utc("2026-10-25T03:30:00Z"),
            ],
            "each repeated hour is its own instant"
        );
    }

    #[test]
    fn catch_up_policies_after_downtime() {
        let every_second = CronSpec::parse("* * * * * *", "UTC").unwrap();
        let next = utc("2026-12-05T10:00:00Z");
        let now = utc("2026-12-05T10:00:09.500Z"); // down for 10 ticks
        let (all, after) = due(&every_second, next, now, CatchUp::All);
        assert_eq!(all.len(), 10);
        assert_eq!(all[0], next);
        assert_eq!(after, Some(utc("2026-12-05T10:00:10Z")));
        let (latest, after_latest) = due(&every_second, next, now, CatchUp::Latest);
        assert_eq!(latest, [utc("2026-12-05T10:00:09Z")]);
        assert_eq!(after_latest, after);
        let (none, _) = due(
            &every_second,
            next,
            utc("2026-12-05T10:01:00Z"),
            CatchUp::None,
        );
        assert_eq!(
            none,
            [utc("2026-12-05T10:01:00Z")],
            "the tick due now is on time"
        );
        let hourly = CronSpec::parse("0 * * * *", "UTC").unwrap();
        let (none, after) = due(
            &hourly,
            utc("2026-12-05T08:00:00Z"),
            utc("2026-12-05T10:30:00Z"),
            CatchUp::None,
        );
        assert!(none.is_empty(), "missed ticks are skipped: {none:?}");
        assert_eq!(after, Some(utc("2026-12-05T11:00:00Z")));
        // Nothing due yet.
        let (nothing, same) = due(
            &hourly,
            utc("2026-12-05T11:00:00Z"),
            utc("2026-12-05T10:30:00Z"),
            CatchUp::All,
        );
        assert!(nothing.is_empty());
        assert_eq!(same, Some(utc("2026-12-05T11:00:00Z")));
        // `all` is bounded.
        let (bounded, _) = due(
            &every_second,
            next,
            utc("2026-12-05T11:00:00Z"),
            CatchUp::All,
        );
        assert_eq!(bounded.len(), MAX_CATCH_UP);
        assert_eq!(bounded.last(), Some(&utc("2026-12-05T11:00:00Z")));
    }

    #[test]
    fn ids_and_names() {
        assert_eq!(
            execution_id("nightly", utc("2026-12-24T06:00:00Z")),
            "schedule:nightly:20261224T060000Z"
        );
        assert!(check_name("nightly-report_2").is_ok());
        assert!(check_name("a:b").is_err());
        assert!(check_name("").is_err());
        assert!(CronSpec::parse("0 7 * * 1-5", "Mars/Base")
            .unwrap_err()
            .contains("time zone"));
        assert!(CronSpec::parse("not cron", "UTC").is_err());
    }
}
