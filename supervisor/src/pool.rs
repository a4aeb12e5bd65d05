//! The worker pool: sandboxed template processes, one execution at a time each.
//!
//! Layout:
//! - [`config`]: everything a pool is started with (sizes, deadlines, limits, sandbox).
//! - [`spawn`]: starting one template process inside its sandbox, with its end of a
//!   socketpair on fd 3.
//! - [`uids`]: the uids a pool's slots lease, unique on the host.
//! - [`firewall`]: the nftables rule that keeps children away from the host's services.
//! - [`posture`]: the start-up line saying which sandbox layers are on, and which off.
//! - [`template_socket`]: async frame reading/writing over that socket (the supervisor's
//!   end; the worker's end is the worker crate's `connection`).
//! - [`template_task`]: one task per template process: owns the child and its socket,
//!   turns frames into events, carries out kills. The only code that signals a template.
//!   (The worker crate's `template` is the template process's own loop.)
//! - [`dispatcher`]: the pool's decisions, with no I/O: queue, slots, deadlines,
//!   cancellation, finalisation, replacement of dead templates, drain on shutdown. It
//!   takes events with the time they happened and returns actions, so it is unit-tested
//!   without processes.
//! - [`driver`]: the [`Pool`] handle and the one task that owns the dispatcher: it turns
//!   requests, template events and timers into events, and carries out the actions
//!   (template tasks, commands, pool events). Everything else talks to it by message
//!   (nextest's dispatcher/executor split).
//!
//! Why a socketpair and not a listening socket: the template inherits its end, so there
//! is no accept race, no filesystem permission to get right for a worker that runs under
//! another uid, no way for another local process to connect and pose as a worker, and it
//! works unchanged inside a new network namespace. The design doc's per-child connection
//! is replaced by the template relaying its child's frames (validated) on its own
//! connection: one ordered stream per template, so `Ended` always follows the child's
//! last frame and the supervisor never has to join two sockets to finalise.

pub mod config;
pub mod dispatcher;
pub mod driver;
mod fair_queue;
pub mod firewall;
pub mod posture;
pub mod spawn;
pub mod template_socket;
pub mod template_task;
pub mod uids;

pub use config::{PoolConfig, PoolError};
pub use driver::Pool;

/// The reply for a request nobody here can answer.
pub fn unavailable(req: &warden_protocol::Request, why: &str) -> warden_protocol::Reply {
    warden_protocol::Reply {
        execution_id: req.execution_id.clone(),
        request_id: req.request_id,
        outcome: warden_protocol::ReplyOutcome::Err {
            message: format!("`{}` is not available: {why}", req.op),
        },
    }
}
