//! Reading the template's own state from `/proc`: resident memory and child processes.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use nix::unistd::Pid;

/// `/proc/<template pid>/statm`, opened once: it is read after every execution, and
/// re-reading an open procfs file from offset 0 regenerates it, without the open, stat
/// and close of a fresh read. Opened by pid, not `self`, so that it keeps naming the
/// template even if read from a forked child.
static STATM: OnceLock<Option<File>> = OnceLock::new();

/// Resident set size of the template process, in bytes (`statm`, second field).
/// 0 if it cannot be read: this is a metric, not something to fail an execution over.
pub fn rss_bytes() -> u64 {
    let file = statm();
    let mut buf = [0u8; 128];
    let n = match file {
        Some(f) => f.read_at(&mut buf, 0).unwrap_or(0),
        None => 0,
    };
    // Reuse-mode code may have closed the descriptor under us: read afresh then.
    let fresh;
    let statm = match std::str::from_utf8(&buf[..n]) {
        Ok(s) if n > 0 => s,
        _ => {
            fresh = fs::read_to_string("/proc/self/statm").unwrap_or_default();
            &fresh
        }
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

/// Opens the template's `statm` now, at start-up, so that the descriptors the template
/// holds do not change with its first execution.
pub fn open_statm() {
    statm();
}

fn statm() -> &'static Option<File> {
    STATM.get_or_init(|| File::open(format!("/proc/{}/statm", std::process::id())).ok())
}

fn page_size() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    }
}

/// Every live or zombie child of this process. Reads `/proc/self/task/*/children`
/// (children are listed per thread, and reuse-mode user code may have started threads);
/// falls back to scanning every `/proc/<pid>/stat` for our pid as parent when that file
/// does not exist (kernels built without CONFIG_PROC_CHILDREN).
pub fn children() -> Vec<Pid> {
    let mut out = Vec::new();
    let mut found_listing = false;
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(list) = fs::read_to_string(task.path().join("children")) {
                found_listing = true;
                out.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse().ok().map(Pid::from_raw)),
                );
            }
        }
    }
    if !found_listing {
        out = children_by_scan();
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn children_by_scan() -> Vec<Pid> {
    let me = Pid::this();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok().map(Pid::from_raw))
        .filter(|&pid| parent_of(pid) == Some(me))
        .collect()
}

/// The parent pid from `/proc/<pid>/stat`. The command name (field 2) may contain spaces
/// and parentheses, so parse from the last `)`.
fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .map(Pid::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_of_a_running_process_is_positive() {
        assert!(rss_bytes() > 0);
    }

    #[test]
    fn lists_a_spawned_child_both_ways() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert!(children().contains(&pid));
        assert!(children_by_scan().contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
