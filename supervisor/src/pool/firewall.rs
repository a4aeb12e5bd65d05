//! No host services for workflows: an nftables rule that rejects every packet a
//! children's socket sends to this host (the loopback interface carries all of them: to
//! 127.0.0.0/8, ::1 and the host's own addresses), matched by the socket owner's gid.
//!
//! Why by gid: children run as their slot's `child` gid ([`super::uids`]), templates
//! as their own, so a template still reaches Redis for the module cache while a workflow
//! cannot reach Redis, PostgreSQL, or anything else listening on the host. Traffic to
//! other hosts is untouched (egress stays possible; `--network-isolation` removes it).
//! DNS on loopback (a local resolver such as systemd-resolved's 127.0.0.53) stays
//! allowed, so names still resolve. Unix sockets are not IP traffic: the children's
//! seccomp filter refuses `socket(AF_UNIX)` instead.
//!
//! The table is shared by every pool on the host (`inet warden`); each pool adds its
//! children's gid range to the set `children`, and the rules are rewritten in one atomic
//! `nft -f` transaction, so applying them twice changes nothing.

use std::io::Write;
use std::process::{Command, Stdio};

/// Applies the rule for children's gids `first..=last`. `Err` says why it could not be,
/// in words an operator can act on.
pub fn block_host_services(first: u32, last: u32) -> Result<(), String> {
    let script = format!(
        "add table inet warden\n\
         add chain inet warden output {{ type filter hook output priority 0; policy accept; }}\n\
         add set inet warden children {{ type gid; flags interval; auto-merge; }}\n\
         flush chain inet warden output\n\
         add rule inet warden output meta skgid @children oifname \"lo\" udp dport 53 accept\n\
         add rule inet warden output meta skgid @children oifname \"lo\" tcp dport 53 accept\n\
         add rule inet warden output meta skgid @children oifname \"lo\" reject\n\
         add element inet warden children {{ {first}-{last} }}\n"
    );
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run nft ({e}): install nftables (apt-get install nftables)")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("cannot write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft did not finish: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the rule ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
