//! The retry policy of a workflow: whether an attempt that ended a given way is tried
//! again, and how long to wait before the next attempt. Plain data and pure functions:
//! the randomness of the jitter is passed in, so the schedule is testable without a
//! clock or a random source.
//!
//! A policy is set at `warden workflow push` (`--retries`, `--retry-backoff`,
//! `--retry-on`, `--retry-exception`, `--no-retry-exception`), stored as JSON in
//! `workflows.retry_policy`, and may be overridden per submission (`retries`: how many
//! retries, the rest of the policy stays). It is applied by the main loop when an
//! attempt ends ([`RetryPolicy::next_attempt`]), and what it decides is written by the
//! transaction that records the attempt (crate::store::commit).
//!
//! Rules:
//! - `cancelled` and `success` are never retried; `failed`, `timeout` and `crashed` are
//!   retried when listed in `retry_on` (all three by default);
//! - a `failed` attempt whose exception class is in `never_retry_exceptions` is not
//!   retried; when `retry_exceptions` is not empty, only those classes are;
//! - attempt `n` (1 is the first) may be followed by another while `n <= retries`;
//! - the wait before attempt `n + 1` is "full jitter" (AWS architecture blog,
//!   "Exponential Backoff And Jitter"): uniform in `[0, min(cap, base * 2^(n-1))]`, so
//!   retries of many executions that failed together spread out instead of returning
//!   in lock-step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outcome::Status;

/// Default first back-off ceiling.
pub const DEFAULT_BASE: Duration = Duration::from_secs(1);
/// Default largest back-off.
pub const DEFAULT_CAP: Duration = Duration::from_secs(300);
/// The most retries a policy may ask for.
pub const MAX_RETRIES: u32 = 100;

/// How an attempt ended, for [`RetryPolicy::retry_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryOn {
    Failed,
    Timeout,
    Crashed,
}

impl std::str::FromStr for RetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<RetryOn, String> {
        match s.trim() {
            "failed" => Ok(RetryOn::Failed),
            "timeout" => Ok(RetryOn::Timeout),
            "crashed" => Ok(RetryOn::Crashed),
            "cancelled" => Err("`cancelled` is never retried: a cancel is final".into()),
            other => Err(format!(
                "`{other}` is not a retryable end: use failed, timeout or crashed"
            )),
        }
    }
}

/// A workflow's retry policy (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// How many attempts may follow the first (0: none).
    pub retries: u32,
    /// The first back-off ceiling, doubled per attempt.
    pub backoff_base_ms: u64,
    /// The largest back-off ceiling.
    pub backoff_cap_ms: u64,
    /// Which ends are retried.
    pub retry_on: Vec<RetryOn>,
    /// When not empty, a `failed` attempt is retried only if its exception class is one
    /// of these.
    #[serde(default)]
    pub retry_exceptions: Vec<String>,
    /// A `failed` attempt whose exception class is one of these is never retried.
    #[serde(default)]
    pub never_retry_exceptions: Vec<String>,
}

impl Default for RetryPolicy {
    /// No retries; when some are asked for (a submission's `retries`), 1 s doubling to
    /// 5 min, on `failed`, `timeout` and `crashed`.
    fn default() -> RetryPolicy {
        RetryPolicy {
            retries: 0,
            backoff_base_ms: DEFAULT_BASE.as_millis() as u64,
            backoff_cap_ms: DEFAULT_CAP.as_millis() as u64,
            retry_on: vec![RetryOn::Failed, RetryOn::Timeout, RetryOn::Crashed],
            retry_exceptions: Vec::new(),
            never_retry_exceptions: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The policy an execution runs under: its workflow's (none: the default), with a
    /// submission's `retries` in place of the workflow's when given.
    pub fn resolve(workflow: Option<&RetryPolicy>, requested: Option<u32>) -> RetryPolicy {
        let mut policy = workflow.cloned().unwrap_or_default();
        if let Some(n) = requested {
            policy.retries = n.min(MAX_RETRIES);
        }
        policy
    }

    /// Whether attempt `attempt` (1-based), which ended `status` with exception class
    /// `error_type`, is followed by another.
    pub fn should_retry(&self, attempt: i32, status: Status, error_type: Option<&str>) -> bool {
        if attempt < 1 || attempt as u64 > self.retries as u64 {
            return false;
        }
        let end = match status {
            Status::Success | Status::Cancelled => return false,
            Status::Failed => RetryOn::Failed,
            Status::Timeout => RetryOn::Timeout,
            Status::Crashed => RetryOn::Crashed,
        };
        if !self.retry_on.contains(&end) {
            return false;
        }
        if end == RetryOn::Failed {
            let class = error_type.unwrap_or_default();
            if self.never_retry_exceptions.iter().any(|e| names(e, class)) {
                return false;
            }
            if !self.retry_exceptions.is_empty()
                && !self.retry_exceptions.iter().any(|e| names(e, class))
            {
                return false;
            }
        }
        true
    }

    /// The back-off ceiling after attempt `attempt`: `min(cap, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 40) as u32;
        let ms = self
            .backoff_base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_cap_ms);
        Duration::from_millis(ms)
    }

    /// The wait after attempt `attempt`, with full jitter: `random` (in `[0, 1)`, from
    /// whatever source the caller uses) times [`RetryPolicy::ceiling`].
    pub fn delay(&self, attempt: i32, random: f64) -> Duration {
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.ceiling(attempt).mul_f64(random)
    }

    /// When attempt `attempt` is followed by another: its delay (random from
    /// `random`); `None`: it is the last.
    pub fn next_attempt(
        &self,
        attempt: i32,
        status: Status,
        error_type: Option<&str>,
        random: impl FnOnce() -> f64,
    ) -> Option<Duration> {
        self.should_retry(attempt, status, error_type)
            .then(|| self.delay(attempt, random()))
    }

    /// Checks what a push stores.
    pub fn validate(&self) -> Result<(), String> {
        if self.retries > MAX_RETRIES {
            return Err(format!(
                "--retries {} is too many; the most is {MAX_RETRIES}",
                self.retries
            ));
        }
        if self.backoff_cap_ms < self.backoff_base_ms {
            return Err("--retry-backoff: the cap must not be below the base".into());
        }
        if self.retry_on.is_empty() {
            return Err("--retry-on needs at least one of failed, timeout, crashed".into());
        }
        Ok(())
    }
}

/// Whether the configured exception name `configured` names the class `class`: the
/// same name, or its last dotted part (`requests.Timeout` names `Timeout`, and the
/// other way round).
fn names(configured: &str, class: &str) -> bool {
    let short = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    configured == class || short(configured) == short(class)
}

/// `--retry-backoff BASE[,CAP]` (`1s,5m`, `500ms`): the base and the cap (the default
/// cap, or the base when that is larger, if none is given).
pub fn parse_backoff(text: &str) -> Result<(Duration, Duration), String> {
    let (base, cap) = match text.split_once(',') {
        Some((b, c)) => (b, Some(c)),
        None => (text, None),
    };
    let base = crate::args::parse_duration(base.trim())
        .map_err(|e| format!("--retry-backoff base: {e}"))?;
    let cap = match cap {
        Some(c) => crate::args::parse_duration(c.trim())
            .map_err(|e| format!("--retry-backoff cap: {e}"))?,
        None => DEFAULT_CAP.max(base),
    };
    if cap < base {
        return Err(format!(
            "--retry-backoff: the cap ({cap:?}) is below the base ({base:?}); write BASE,CAP"
        ));
    }
    Ok((base, cap))
}

/// `--retry-on failed,timeout,crashed`.
pub fn parse_retry_on(text: &str) -> Result<Vec<RetryOn>, String> {
    let mut on = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let end: RetryOn = part.parse()?;
        if !on.contains(&end) {
            on.push(end);
        }
    }
    if on.is_empty() {
        return Err("--retry-on needs at least one of failed, timeout, crashed".into());
    }
    Ok(on)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retries: u32, base_ms: u64, cap_ms: u64) -> RetryPolicy {
        RetryPolicy {
            retries,
            backoff_base_ms: base_ms,
            backoff_cap_ms: cap_ms,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn ceilings_double_and_are_capped() {
        let p = policy(10, 1_000, 5_000);
        let ceilings: Vec<u128> = (1..=6).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
        // Huge attempt numbers do not overflow.
        assert_eq!(p.ceiling(i32::MAX), Duration::from_millis(5_000));
    }

    #[test]
    fn delays_grow_with_the_same_draw_and_stay_within_full_jitter_bounds() {
        let p = policy(10, 100, 1_600);
        let at_top: Vec<Duration> = (1..=8).map(|n| p.delay(n, 0.999)).collect();
        assert!(at_top.windows(2).all(|w| w[0] <= w[1]), "{at_top:?}");
        assert!(at_top[0] < at_top[3], "{at_top:?}");
        assert!(at_top.iter().all(|d| *d <= Duration::from_millis(1_600)));
        // Full jitter: anywhere from 0 to the ceiling, never past it.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for n in 1..=8 {
            for _ in 0..200 {
                let d = p.delay(n, next());
                assert!(d <= p.ceiling(n), "attempt {n}: {d:?} > {:?}", p.ceiling(n));
            }
        }
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, f64::NAN), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5), Duration::from_millis(200));
    }

    #[test]
    fn attempts_are_retried_while_retries_remain() {
        let p = policy(2, 10, 10);
        assert!(p.should_retry(1, Status::Failed, Some("ValueError")));
        assert!(p.should_retry(2, Status::Failed, Some("ValueError")));
        assert!(!p.should_retry(3, Status::Failed, Some("ValueError")));
        assert!(!policy(0, 10, 10).should_retry(1, Status::Failed, None));
    }

    #[test]
    fn cancelled_and_success_are_never_retried_and_retry_on_filters() {
        let p = policy(5, 10, 10);
        assert!(!p.should_retry(1, Status::Cancelled, Some("Cancelled")));
        assert!(!p.should_retry(1, Status::Success, None));
        assert!(p.should_retry(1, Status::Timeout, Some("Timeout")));
        assert!(p.should_retry(1, Status::Crashed, Some("Crashed")));
        let only_timeouts = RetryPolicy {
            retry_on: vec![RetryOn::Timeout],
            ..p
        };
        assert!(only_timeouts.should_retry(1, Status::Timeout, None));
        assert!(!only_timeouts.should_retry(1, Status::Failed, Some("ValueError")));
        assert!(!only_timeouts.should_retry(1, Status::Crashed, None));
    }

    #[test]
    fn exception_lists_decide_for_failed_attempts() {
        let never = RetryPolicy {
            never_retry_exceptions: vec!["PermissionError".into(), "billing.Fatal".into()],
            ..policy(3, 10, 10)
        };
        assert!(!never.should_retry(1, Status::Failed, Some("PermissionError")));
        assert!(!never.should_retry(1, Status::Failed, Some("Fatal")));
        assert!(never.should_retry(1, Status::Failed, Some("ValueError")));
        // The lists are about exceptions: a timeout is still retried.
        assert!(never.should_retry(1, Status::Timeout, Some("PermissionError")));
        let only = RetryPolicy {
            retry_exceptions: vec!["ConnectionError".into()],
            ..policy(3, 10, 10)
        };
        assert!(only.should_retry(1, Status::Failed, Some("ConnectionError")));
        assert!(!only.should_retry(1, Status::Failed, Some("ValueError")));
    }

    #[test]
    fn a_submission_overrides_the_number_of_retries_only() {
        let wf = policy(1, 250, 1_000);
        let p = RetryPolicy::resolve(Some(&wf), Some(4));
        assert_eq!((p.retries, p.backoff_base_ms), (4, 250));
        assert_eq!(RetryPolicy::resolve(Some(&wf), None), wf);
        let none = RetryPolicy::resolve(None, Some(2));
        assert_eq!(none.retries, 2);
        assert_eq!(none.backoff_base_ms, 1_000);
        assert_eq!(RetryPolicy::resolve(None, None).retries, 0);
    }

    #[test]
    fn backoff_and_retry_on_parse() {
        assert_eq!(
            parse_backoff("1s,5m").unwrap(),
            (Duration::from_secs(1), Duration::from_secs(300))
        );
        assert_eq!(
            parse_backoff("500ms").unwrap(),
            (Duration::from_millis(500), DEFAULT_CAP)
        );
        assert!(parse_backoff("5m,1s").unwrap_err().contains("below"));
        assert!(parse_backoff("soon").is_err());
        assert_eq!(
            parse_retry_on("failed, timeout,failed").unwrap(),
            [RetryOn::Failed, RetryOn::Timeout]
        );
        assert!(parse_retry_on("cancelled").unwrap_err().contains("never"));
        assert!(parse_retry_on("").is_err());
    }

    #[test]
    fn next_attempt_draws_only_when_it_retries() {
        let p = policy(1, 1_000, 1_000);
        let mut drawn = 0;
        assert_eq!(
            p.next_attempt(1, Status::Failed, None, || {
                drawn += 1;
                0.5
            }),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            p.next_attempt(2, Status::Failed, None, || unreachable!()),
            None
        );
        assert_eq!(drawn, 1);
    }
}
