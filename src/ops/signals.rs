//! OS signals mapped to the daemon's shutdown: the first SIGTERM/SIGINT
//! drains (stop claiming, let in-flight calls finish within the grace), a
//! second one exits at once — safe, because every call is already marked
//! in flight and is reconciled on the next run.

use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// Starts the signal listener.
pub fn spawn(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    tokio::spawn(async move {
        let mut seen = 0;
        while let Some(sig) = signals.next().await {
            seen += 1;
            if seen == 1 {
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
