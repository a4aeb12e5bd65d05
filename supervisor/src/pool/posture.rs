//! What the sandbox could and could not turn on, said once when a pool starts: one
//! `info` line listing the layers in force, and one `warn` line per layer that is off,
//! saying what a workflow can then do and what would turn it on.

use warden_protocol::Isolation;

use super::config::PoolConfig;

/// The layers in force and the warnings, for a pool started with `cfg` whose firewall
/// rule came out as `firewall` (`None`: not attempted, the supervisor is not root).
pub fn describe(cfg: &PoolConfig, firewall: Option<&Result<(), String>>) -> (String, Vec<String>) {
    let mut on = vec![
        "seccomp filter".to_string(),
        "non-dumpable templates".to_string(),
        "scrubbed environment".to_string(),
        "a directory per execution".to_string(),
    ];
    let mut off = Vec::new();
    match (cfg.slot_ids.first(), cfg.slot_ids.last()) {
        (Some(first), Some(last)) => {
            on.push(format!(
                "worker uids {}-{} (children {}-{})",
                first.template, last.template, first.child, last.child
            ));
            on.push(format!(
                "private /tmp, /var/tmp, /dev/shm ({} each)",
                crate::size::show(cfg.tmp_size)
            ));
        }
        _ => off.push(
            "not root: workers run as the supervisor's own user (no uid of their own, no \
             private /tmp, no process limit, no firewall rule); run `warden` as root for these"
                .to_string(),
        ),
    }
    match firewall {
        Some(Ok(())) if cfg.isolation == Isolation::Fork => {
            on.push("host services blocked (nftables)".to_string())
        }
        Some(Err(why)) => off.push(format!(
            "workflows can reach services on this host over TCP (Redis, PostgreSQL, ...): {why}"
        )),
        _ => {}
    }
    if cfg.isolation == Isolation::Reuse {
        off.push(
            "reuse mode: workflow code runs in the template, which reads Redis itself: \
             services on this host stay reachable over TCP, and executions of one \
             organization share an interpreter; use --isolation fork for untrusted code"
                .to_string(),
        );
    }
    if cfg.network_isolation {
        on.push("no network (own network namespace)".to_string());
    }
    (format!("sandbox: {}", on.join(", ")), off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::uids::SlotIds;

    fn cfg(root: bool, isolation: Isolation) -> PoolConfig {
        let mut c = PoolConfig::new("w".into(), "r".into());
        c.isolation = isolation;
        c.slot_ids = if root {
            vec![SlotIds::for_template(61000), SlotIds::for_template(61001)]
        } else {
            Vec::new()
        };
        c
    }

    #[test]
    fn everything_on_says_so_and_warns_of_nothing() {
        let (line, warnings) = describe(&cfg(true, Isolation::Fork), Some(&Ok(())));
        assert!(
            line.contains("worker uids 61000-61001 (children 62000-62001)"),
            "{line}"
        );
        assert!(line.contains("host services blocked"), "{line}");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn each_layer_that_is_off_gets_a_warning_that_says_why() {
        let no_nft = Err("cannot run nft".to_string());
        let (line, warnings) = describe(&cfg(true, Isolation::Fork), Some(&no_nft));
        assert!(!line.contains("host services blocked"), "{line}");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("can reach services on this host"));
        assert!(warnings[0].contains("cannot run nft"));

        let (_, warnings) = describe(&cfg(false, Isolation::Fork), None);
        assert!(
            warnings.iter().any(|w| w.starts_with("not root")),
            "{warnings:?}"
        );

        let (line, warnings) = describe(&cfg(true, Isolation::Reuse), Some(&Ok(())));
        assert!(!line.contains("host services blocked"), "{line}");
        assert!(
            warnings.iter().any(|w| w.starts_with("reuse mode")),
            "{warnings:?}"
        );
    }
}
