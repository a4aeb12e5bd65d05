//! systemd's notify protocol (`sd-notify`), for a unit with `Type=notify` and
//! `WatchdogSec=` (deploy/warden.service):
//!
//! - `READY=1` once start-up has finished (services connected, the pool's templates
//!   up, the heartbeat set, intake started);
//! - `WATCHDOG=1` from the daemon's main loop every half of `WATCHDOG_USEC`, so a loop
//!   that stalls stops pinging and systemd restarts the process;
//! - `STOPPING=1` when the first SIGTERM/SIGINT starts the drain.
//!
//! Without `NOTIFY_SOCKET` in the environment (not run by systemd) every call does
//! nothing. A failed send is logged, never fatal: the work goes on without systemd.

use std::time::Duration;

use sd_notify::NotifyState;

/// Start-up has finished.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// The main loop is alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The drain has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// How often to ping the watchdog: half its timeout, when systemd set one for this
/// process (`WATCHDOG_USEC`, and `WATCHDOG_PID` naming it if present).
pub fn watchdog_every() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd (NOTIFY_SOCKET)");
    }
}
