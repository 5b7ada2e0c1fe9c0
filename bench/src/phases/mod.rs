//! Phases 2–7 against the real backend, one module each: [`connect`] storm, [`idle`] memory,
//! [`latency`], [`throughput`], [`fanout`] and kill -9 [`restart`]. Each records its `mesh.*`
//! keys into the [`Report`](crate::report::Report).

pub mod connect;
pub mod fanout;
pub mod idle;
pub mod latency;
pub mod restart;
pub mod throughput;

use std::time::Duration;

/// Generous bound for the fleet to come up: a minute plus 20 ms per agent.
pub fn fleet_patience(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20 * n as u64)
}
