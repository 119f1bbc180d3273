//! OS signals mapped to the daemon's controls: the first SIGTERM/SIGINT
//! drains (stop claiming, let in-flight calls finish within the grace), a
//! second one exits at once — safe, because every call is already marked
//! in flight and is reconciled on the next run. SIGHUP reloads.

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// Starts the signal listener; `reload` runs on every SIGHUP.
pub fn spawn(shutdown: CancellationToken, reload: impl Fn() + Send + 'static) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    tokio::spawn(async move {
        let mut stops = 0;
        while let Some(sig) = signals.next().await {
            if sig == SIGHUP {
                tracing::info!("SIGHUP: reloading rates and log level");
                reload();
                continue;
            }
            stops += 1;
            if stops == 1 {
                tracing::info!(signal = sig, "shutdown requested; draining");
                shutdown.cancel();
            } else {
                tracing::warn!(signal = sig, "second signal; exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
