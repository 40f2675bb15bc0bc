//! The graceful-shutdown coordinator: phases (`Running` → `Draining` →
//! `Stopping`) that connections watch, and a [`Tracker`] that counts what must
//! finish before the process exits: connections, requests in flight, and
//! upgraded (WebSocket) connections, which a plain `GracefulShutdown` of the
//! HTTP server forgets once they leave HTTP.
//!
//! ```
//! use nexus_health::shutdown::{Phase, Shutdown};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let shutdown = Shutdown::new();
//! let guard = shutdown.tracker().track(); // e.g. one per connection
//! let mut phase = shutdown.subscribe();
//! shutdown.drain();
//! assert_eq!(*phase.borrow_and_update(), Phase::Draining);
//! drop(guard);
//! assert!(shutdown.tracker().wait_idle(std::time::Duration::from_secs(1)).await);
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Where the process is in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving normally.
    Running,
    /// Readiness is 503; still serving, but HTTP/1 responses carry
    /// `Connection: close` and HTTP/2 connections get GOAWAY.
    Draining,
    /// Listeners closed; open connections finish what they have and close.
    Stopping,
}

/// Counts live things (connections, upgraded streams) and wakes waiters at zero.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    count: AtomicUsize,
    idle: Notify,
}

/// One tracked thing; dropping it untracks it.
#[derive(Debug)]
pub struct TrackGuard(Arc<Inner>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tracker {
    /// A tracker with nothing in it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Track one more thing until the guard drops.
    pub fn track(&self) -> TrackGuard {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        TrackGuard(Arc::clone(&self.0))
    }

    /// How many things are tracked.
    pub fn active(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Wait until nothing is tracked, at most `limit`; whether it got there.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.0.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// The coordinator: the current [`Phase`] and the [`Tracker`] of what must finish.
#[derive(Debug, Clone)]
pub struct Shutdown {
    phase: Arc<watch::Sender<Phase>>,
    tracker: Tracker,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Running, nothing tracked.
    pub fn new() -> Self {
        Self { phase: Arc::new(watch::Sender::new(Phase::Running)), tracker: Tracker::new() }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Watch phase changes (each connection does).
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Enter `Draining` (never goes back).
    pub fn drain(&self) {
        self.advance(Phase::Draining);
    }

    /// Enter `Stopping`.
    pub fn stop(&self) {
        self.advance(Phase::Stopping);
    }

    fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|p| {
            if *p < to {
                *p = to;
                true
            } else {
                false
            }
        });
    }

    /// What must finish before exit.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }
}

/// Resolves once `phase` is [`Phase::Stopping`] (or its [`Shutdown`] is gone), looking at
/// the current phase first: a loop that subscribes after the shutdown began still stops,
/// where `changed()` alone would wait for a change that already happened.
///
/// ```
/// use nexus_health::shutdown::{Shutdown, stopping};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let shutdown = Shutdown::new();
/// shutdown.stop();
/// // Subscribed after the change, and still resolves.
/// stopping(shutdown.subscribe()).await;
/// # }
/// ```
pub async fn stopping(mut phase: watch::Receiver<Phase>) {
    while *phase.borrow_and_update() != Phase::Stopping {
        if phase.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_the_tracker_waits_for_zero() {
        let s = Shutdown::new();
        s.stop();
        s.drain();
        assert_eq!(s.phase(), Phase::Stopping);
        let g1 = s.tracker().track();
        let g2 = s.tracker().track();
        assert!(!s.tracker().wait_idle(Duration::from_millis(20)).await);
        let t = s.tracker().clone();
        let waiter = tokio::spawn(async move { t.wait_idle(Duration::from_secs(5)).await });
        drop(g1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(g2);
        assert!(waiter.await.unwrap());
    }
}
