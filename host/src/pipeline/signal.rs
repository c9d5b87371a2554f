//! What wakes a pipeline's driver: new input in a source's queue, a control
//! request, a stop. The driver waits on one [`Signal`] with a deadline (the
//! next batch boundary, or none), never on a sleep or a poll.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// How a pipeline stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopMode {
    /// Receivers stop; everything they had queued runs in final batches,
    /// then sinks close and a final checkpoint is written.
    Graceful,
    /// Receivers stop; the batch in flight completes, queued input is left
    /// (sources with a write-ahead log or a position read it again on the
    /// next start), sinks close and a final checkpoint is written.
    Now,
}

#[derive(Debug, Default)]
struct State {
    woken: bool,
    stop: Option<StopMode>,
}

/// Wakes a pipeline's driver. Cheap to clone; every clone is the same signal.
#[derive(Clone, Default)]
pub struct Signal {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal").field("stop", &self.stop_mode()).finish()
    }
}

impl Signal {
    /// A signal nobody has raised.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the driver (something arrived).
    pub fn notify(&self) {
        self.lock().woken = true;
        self.inner.1.notify_all();
    }

    /// Asks the pipeline to stop; `Now` overrides an earlier `Graceful`.
    pub fn stop(&self, mode: StopMode) {
        let mut state = self.lock();
        if state.stop != Some(StopMode::Now) {
            state.stop = Some(mode);
        }
        state.woken = true;
        drop(state);
        self.inner.1.notify_all();
    }

    /// How the pipeline was asked to stop, if it was.
    pub fn stop_mode(&self) -> Option<StopMode> {
        self.lock().stop
    }

    /// True once a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.stop_mode().is_some()
    }

    /// Waits until woken (a stop wakes it once), or until `deadline` (none:
    /// no deadline), and clears the wake-up. Returns at once if woken since
    /// the last wait.
    pub fn wait_until(&self, deadline: Option<Instant>) {
        let mut state = self.lock();
        while !state.woken {
            match deadline {
                None => state = self.inner.1.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    state = self
                        .inner
                        .1
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        state.woken = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_notify_before_the_wait_is_not_lost_and_now_overrides_graceful() {
        let signal = Signal::new();
        signal.notify();
        signal.wait_until(None);
        signal.stop(StopMode::Graceful);
        signal.stop(StopMode::Now);
        signal.stop(StopMode::Graceful);
        assert_eq!(signal.stop_mode(), Some(StopMode::Now));
        signal.wait_until(None);
        // The stop woke it once; later waits wait for something new.
        signal.wait_until(Some(Instant::now() + Duration::from_millis(5)));
        assert!(signal.is_stopped());
    }

    #[test]
    fn a_wait_ends_at_its_deadline_or_when_notified() {
        let signal = Signal::new();
        signal.wait_until(Some(Instant::now() + Duration::from_millis(5)));
        let other = signal.clone();
        let waker = std::thread::spawn(move || other.notify());
        signal.wait_until(None);
        waker.join().unwrap();
    }
}
