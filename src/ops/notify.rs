//! systemd notification (sd_notify) without libsystemd: READY, STOPPING
//! and watchdog pings over `$NOTIFY_SOCKET`. Does nothing outside systemd.

use std::time::Duration;

/// Sends one state line; errors are ignored (systemd may not be there).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if bytes.first() == Some(&b'@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            match std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..]) {
                Ok(addr) => sock.send_to_addr(state.as_bytes(), &addr),
                Err(e) => Err(e),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            Ok(0)
        }
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The watchdog ping interval systemd asked for (half of WATCHDOG_USEC).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// Pings the systemd watchdog every `every` until `stop`.
pub async fn watchdog(every: Duration, stop: tokio_util::sync::CancellationToken) {
    loop {
        notify("WATCHDOG=1");
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
