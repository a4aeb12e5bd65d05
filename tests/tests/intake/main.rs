//! The Redis intake against a real Redis: one test binary for the area (fewer links
//! than one binary per file), one behaviour per module. Run one module with e.g.
//! `cargo test -p warden-tests --test intake stream::`.
//!
//! - [`cancel`]: cancel requests, by marker and on the listener, and resubscription.
//! - [`client`]: the client side: connection errors, waiting for completions, live logs.
//! - [`commandstats`]: the server's own count of what one batch costs.
//! - [`lanes`]: fair intake: lanes per queue and organization, turns, priorities, wake-ups.
//! - [`limits`]: concurrency limits: entries over a limit wait, permits given back.
//! - [`persistence`]: the start-up persistence check.
//! - [`request`]: the stream entry format end to end, malformed entries rejected.
//! - [`stream`]: the stream and its consumer group: delivery, takeover, round trips.

mod cancel;
mod client;
mod commandstats;
mod lanes;
mod limits;
mod persistence;
mod request;
mod stream;
