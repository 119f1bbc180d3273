//! OS signals mapped to the daemon's controls: the first SIGTERM/SIGINT
//! drains (stop claiming, let in-flight calls finish within the grace), a
//! second one exits at once — safe, because every call is already marked
//! in flight and is reconciled on the next run. SIGHUP reloads.

use std::future::Future;

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop claiming and let in-flight calls finish.
    Drain,
    /// Exit the process now (a second stop signal).
    ExitNow,
    /// Re-read rates and the log level.
    Reload,
}

/// The control for signal `sig` when `stops` stop signals came before it.
pub fn control(sig: i32, stops: u32) -> Control {
    match sig {
        SIGHUP => Control::Reload,
        _ if stops == 0 => Control::Drain,
        _ => Control::ExitNow,
    }
}

/// Registers for SIGTERM, SIGINT and SIGHUP and returns the listener:
/// until `stop`, a drain cancels `shutdown` and `reload` runs on every
/// SIGHUP.
pub fn listen(
    shutdown: CancellationToken,
    stop: CancellationToken,
    reload: impl Fn() + Send + 'static,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    Ok(async move {
        let mut stops = 0;
        loop {
            let sig = tokio::select! {
                Some(sig) = signals.next() => sig,
                _ = stop.cancelled() => return,
            };
            match control(sig, stops) {
                Control::Reload => {
                    tracing::info!("SIGHUP: reloading rates and log level");
                    reload();
                }
                Control::Drain => {
                    stops += 1;
                    tracing::info!(signal = sig, "shutdown requested; draining");
                    shutdown.cancel();
                }
                Control::ExitNow => {
                    tracing::warn!(signal = sig, "second signal; exiting now");
                    std::process::exit(130);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_drains_the_second_exits_and_sighup_reloads() {
        assert_eq!(control(SIGTERM, 0), Control::Drain);
        assert_eq!(control(SIGINT, 0), Control::Drain);
        assert_eq!(control(SIGINT, 1), Control::ExitNow);
        assert_eq!(control(SIGHUP, 0), Control::Reload);
        assert_eq!(control(SIGHUP, 1), Control::Reload);
    }
}
