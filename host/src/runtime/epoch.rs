//! The engine's epoch clock: one background thread advances the engine's
//! epoch every tick ([`TICK`] by default; wasmtime's epoch interruption: a cheap check on loop
//! back-edges and function entries instead of a timer per call). Every call
//! runs with a deadline of one tick; at each tick the store's callback lends
//! the thread to other pipelines and checks the call's own deadline
//! ([`super::slicing`]).

use std::time::Duration;

use wasmtime::Engine;

/// The default time between epoch increments: the granularity of call
/// deadlines and of time-slicing. A tick costs the ticker thread one wake-up
/// and a call that runs through it one callback; calls shorter than a tick
/// cost nothing.
pub const TICK: Duration = Duration::from_millis(1);

/// Starts the ticker thread for `engine`, one increment every `tick`. It
/// stops when the engine is dropped.
pub(crate) fn start_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("cannot start the epoch thread");
}
