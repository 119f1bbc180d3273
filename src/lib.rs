//! chatferry moves one-to-one chat history into ZEGO ZIM and Tencent Cloud
//! IM, exactly once and in order, from a Postgres job table.
//!
//! - `config`: the typed configuration.
//! - `daemon`: the daemon as a library (`Daemon::build`, `run_until_stopped`).
//! - `cli`: the command line, one small function per command.
//! - `store`: every SQL statement.
//! - `lane_key`: the key that names a lane (a ZIM view, a Tencent conversation).
//! - `load`: JSON Lines in, jobs out.
//! - `worker`: lanes, leases, the ordered send loop and its checkpoints.
//! - `ratelimit`: per-target token buckets.
//! - `providers`: the provider trait, and `zim` and `tencent` wire formats.
//! - `simulate`: the local stand-in for both providers.
//! - `verify`: reading a batch back from its provider.
//! - `ops`: signals, health and metrics.
//! - `backoff`: the one retry schedule (exponential, full jitter).

pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod lane_key;
pub mod load;
pub mod ops;
pub mod probe;
pub mod providers;
pub mod ratelimit;
pub mod simulate;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod verify;
pub mod worker;
