//! Time-slicing of long plugin calls: while a call runs, other pipelines'
//! waiting tasks get the worker thread at every epoch tick.
//!
//! Every plugin call runs with an epoch deadline of one tick ([`super::epoch::TICK`]);
//! when it is reached, the store's callback ([`on_tick`]) first lends the
//! thread to whatever the worker pool installed as this thread's
//! [`LendHook`] (it runs other pipelines' queued partition tasks that are
//! shorter than the call so far, nested on this stack, and says how long
//! that took), then checks the call's own
//! deadline with the lent time left out, and lets the call go on for another
//! tick. So a heavy but legitimate call (seconds per record) cannot hold a
//! shared worker away from other pipelines for longer than a tick, and it is
//! not charged for the time its thread spent on them.
//!
//! Why not wasmtime's async calls (`epoch_deadline_async_yield_and_update`):
//! they would make every operator, retry loop and state store above a plugin
//! call `async`, and run every call on a separate fiber stack. Lending the
//! thread at the tick gives the same fairness with synchronous code, costs a
//! thread-local read per tick when no other pipeline waits, and nothing on
//! calls shorter than a tick.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Runs other work on this thread during a call that has run for the given
/// time of its own, and returns how long the work took ([`Duration::ZERO`]
/// when there was nothing to run).
pub type LendHook = Box<dyn Fn(Duration) -> Duration>;

thread_local! {
    static LEND: RefCell<Option<LendHook>> = const { RefCell::new(None) };
}

/// Installs `hook` for plugin calls made on this thread from now on (the
/// worker pool does this once per worker thread).
pub fn install(hook: LendHook) {
    LEND.with(|lend| *lend.borrow_mut() = Some(hook));
}

/// Lends the thread through this thread's hook, if one is installed, during
/// a call that has run for `own_time`.
fn lend(own_time: Duration) -> Duration {
    // The hook may run a nested plugin call whose ticks come back here
    // (shared borrows nest); the hook itself bounds how deep that goes.
    LEND.with(|lend| {
        lend.borrow()
            .as_ref()
            .map_or(Duration::ZERO, |hook| hook(own_time))
    })
}

/// Own time a call runs between two times it lends its thread: however
/// often it is nudged, a call keeps at least this share of its worker.
pub const OWN_TIME_BETWEEN_LENDS: Duration = Duration::from_micros(200);

/// The clock of the call in progress on one store.
#[derive(Debug, Clone, Copy)]
pub struct CallClock {
    started: Instant,
    lent: Duration,
    deadline: Duration,
    /// Own time before which the call does not lend again.
    lend_after: Duration,
}

impl Default for CallClock {
    fn default() -> Self {
        Self::start(Duration::MAX)
    }
}

impl CallClock {
    /// A call starting now that may run for `deadline` of its own time.
    pub fn start(deadline: Duration) -> Self {
        Self {
            started: Instant::now(),
            lent: Duration::ZERO,
            deadline,
            lend_after: Duration::ZERO,
        }
    }

    /// The call's own running time: wall time less what was lent.
    pub fn own_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.lent)
    }
}

/// What the epoch callback does at a tick: lend the thread (unless the call
/// has run less than [`OWN_TIME_BETWEEN_LENDS`] since it last did), then end
/// the call with [`wasmtime::Trap::Interrupt`] if its own time is past its
/// deadline, or give it one more tick.
pub fn on_tick(clock: &mut CallClock) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    let own = clock.own_time();
    if own >= clock.lend_after {
        clock.lent += lend(own);
        clock.lend_after = own + OWN_TIME_BETWEEN_LENDS;
    }
    if clock.own_time() >= clock.deadline {
        return Err(wasmtime::Trap::Interrupt.into());
    }
    Ok(wasmtime::UpdateDeadline::Continue(1))
}
