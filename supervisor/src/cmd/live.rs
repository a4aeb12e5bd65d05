//! What `warden executions list|show` say of a row that is `running` in PostgreSQL.
//! Such a row was taken by a supervisor, but a worker may not have started it yet: the
//! batch statement that takes it writes no start time (crate::store::executions), the
//! result statement writes the real one. Meanwhile the supervisor's start mark in Redis
//! (crate::intake::StartMark, one `MGET` for all the rows shown) tells which:
//!
//! | row | start mark for its attempt | shown |
//! | --- | --- | --- |
//! | `running`, `started_at` empty | none | `pending`, queued on its supervisor, no start time |
//! | `running`, `started_at` empty | present | `running` since the mark's time |
//! | anything else | - | as stored |
//!
//! Without Redis the CLI cannot tell, and shows `running` with no start time and says
//! so (`start unknown`).

use chrono::{DateTime, Utc};

use crate::args::ConnArgs;
use crate::store::ExecutionStatus;

/// What to show of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub status: ExecutionStatus,
    pub started_at: Option<DateTime<Utc>>,
    /// Taken by this supervisor and waiting in its queue for a worker.
    pub queued_on: Option<String>,
    /// `running`, but Redis could not say since when (or whether it is still queued).
    pub start_unknown: bool,
}

/// One row as stored: status, attempt, start time, supervisor.
pub struct Stored<'a> {
    pub id: &'a str,
    pub status: ExecutionStatus,
    pub attempt: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub supervisor: Option<&'a str>,
}

/// What to show of each row, in order (reads Redis only when a row needs it).
pub async fn resolve(conn: &ConnArgs, rows: &[Stored<'_>]) -> Vec<Shown> {
    let asks: Vec<&str> = rows
        .iter()
        .filter(|r| needs_mark(r))
        .map(|r| r.id)
        .collect();
    let marks = if asks.is_empty() {
        Some(Vec::new())
    } else {
        match conn.intake().await {
            Ok(client) => client.start_marks(&asks).await.ok(),
            Err(_) => None,
        }
    };
    let mut marks = marks.map(Vec::into_iter);
    rows.iter()
        .map(|r| {
            if !needs_mark(r) {
                return shown_as_stored(r);
            }
            match marks.as_mut() {
                Some(m) => shown(r, m.next().flatten()),
                None => Shown {
                    start_unknown: true,
                    ..shown_as_stored(r)
                },
            }
        })
        .collect()
}

fn needs_mark(r: &Stored<'_>) -> bool {
    r.status == ExecutionStatus::Running && r.started_at.is_none()
}

fn shown_as_stored(r: &Stored<'_>) -> Shown {
    Shown {
        status: r.status,
        started_at: r.started_at,
        queued_on: None,
        start_unknown: false,
    }
}

/// A `running` row with no start time, given its start mark (if any).
fn shown(r: &Stored<'_>, mark: Option<crate::intake::StartMark>) -> Shown {
    match mark.filter(|m| m.attempt == r.attempt) {
        Some(m) => Shown {
            status: ExecutionStatus::Running,
            started_at: Some(m.started_at),
            queued_on: None,
            start_unknown: false,
        },
        None => Shown {
            status: ExecutionStatus::Pending,
            started_at: None,
            queued_on: Some(r.supervisor.unwrap_or("?").to_owned()),
            start_unknown: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::StartMark;

    fn row(status: ExecutionStatus, attempt: i32, started: bool) -> Stored<'static> {
        Stored {
            id: "e1",
            status,
            attempt,
            started_at: started.then(Utc::now),
            supervisor: Some("sup-1"),
        }
    }

    fn mark(attempt: i32) -> StartMark {
        StartMark {
            attempt,
            started_at: Utc::now(),
            supervisor: "sup-1".into(),
        }
    }

    #[test]
    fn a_taken_row_without_a_mark_is_pending_on_its_supervisor() {
        let s = shown(&row(ExecutionStatus::Running, 1, false), None);
        assert_eq!(s.status, ExecutionStatus::Pending);
        assert_eq!(s.started_at, None);
        assert_eq!(s.queued_on.as_deref(), Some("sup-1"));
    }

    #[test]
    fn a_mark_of_its_attempt_makes_it_running_since_the_mark() {
        let m = mark(2);
        let s = shown(&row(ExecutionStatus::Running, 2, false), Some(m.clone()));
        assert_eq!(s.status, ExecutionStatus::Running);
        assert_eq!(s.started_at, Some(m.started_at));
        assert_eq!(s.queued_on, None);
    }

    #[test]
    fn a_mark_of_an_earlier_attempt_does_not_count() {
        let s = shown(&row(ExecutionStatus::Running, 2, false), Some(mark(1)));
        assert_eq!(s.status, ExecutionStatus::Pending);
        assert_eq!(s.started_at, None);
    }

    #[test]
    fn other_rows_need_no_mark() {
        assert!(!needs_mark(&row(ExecutionStatus::Running, 1, true)));
        assert!(!needs_mark(&row(ExecutionStatus::Success, 1, true)));
        assert!(!needs_mark(&row(ExecutionStatus::Pending, 1, false)));
        assert!(needs_mark(&row(ExecutionStatus::Running, 1, false)));
    }
}
