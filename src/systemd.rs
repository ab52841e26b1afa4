//! Tells systemd, when it started us as a `Type=notify` service, where the
//! gateway stands: ready (listeners bound, queue running), reloading,
//! stopping; and, when the unit sets `WatchdogSec=`, that it is alive.
//!
//! Without `NOTIFY_SOCKET` every call does nothing, so the gateway runs the
//! same by hand, in a container or under another supervisor.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::queue::QueueHandle;

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Between this and the next [`ready`], systemd knows a reload is running.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Pings the watchdog at half its interval, but only while the queue's
/// scheduler answers: a gateway whose scheduler hangs is restarted by
/// systemd instead of accepting mail it never sends.
pub async fn watchdog(queue: QueueHandle, mut shutdown: watch::Receiver<bool>) {
    let Some(period) = watchdog_period() else {
        return;
    };
    let interval = period / 2;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        match tokio::time::timeout(interval, queue.alive()).await {
            Ok(true) => send(&[NotifyState::Watchdog]),
            Ok(false) => return,
            Err(_) => tracing::error!(
                "the queue scheduler did not answer within {}: not telling systemd we are alive",
                humantime::format_duration(interval)
            ),
        }
    }
}

/// `WATCHDOG_USEC`, for this process: as sd_watchdog_enabled(3), a
/// `WATCHDOG_PID` that names another process turns it off, an absent one
/// does not.
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse() != Ok(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}
