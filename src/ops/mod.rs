//! Operating the daemon: signals, the ops HTTP endpoint, metrics and
//! systemd notification.

pub mod http;
pub mod metrics;
pub mod notify;
pub mod signals;
