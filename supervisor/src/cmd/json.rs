//! `--json` on the list, show and status commands: each prints ONE JSON document on
//! stdout (a list is an array of objects, in the table's order; `show` and `status`
//! an object), on one line, and nothing else on stdout. Field names are part of the
//! interface (README, "Scripting"): they are only ever added to, never renamed.
//! Absent values are `null`; times are RFC 3339 in UTC (`2026-12-01T10:00:00.000Z`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Prints `value` as one line of JSON.
pub fn print(value: &Value) {
    println!("{value}");
}

/// A time as the JSON output writes it.
pub fn time(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// An optional time (`null` when absent).
pub fn opt_time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.5+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(time(t), Value::String("2026-12-01T09:00:00.500Z".into()));
        assert_eq!(opt_time(None), Value::Null);
    }
}
