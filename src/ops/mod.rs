//! Operating the daemon: signals (and, later, health and metrics).

pub mod signals;
