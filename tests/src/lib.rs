//! Shared helpers for the end-to-end tests: each test gets its own PostgreSQL database
//! ([`db`]), its own Redis key prefix ([`redis`]) and its own pool and run directory
//! ([`pool`]), so tests run in parallel; [`serve`] runs the whole daemon on them.

pub mod db;
pub mod pool;
pub mod proxy;
pub mod redis;
pub mod serve;
