//! The engine's epoch clock: one background thread advances the engine's
//! epoch every [`TICK`], which is how a call's deadline interrupts a plugin
//! stuck in a loop (wasmtime's epoch interruption: a cheap check on loop
//! back-edges and function entries instead of a timer per call).

use std::time::Duration;

use wasmtime::Engine;

/// Time between epoch increments: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// Starts the ticker thread for `engine`. It stops when the engine is dropped.
pub(crate) fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("cannot start the epoch thread");
}

/// Epoch ticks that cover `deadline` (at least one full tick, rounded up, plus
/// one because the current tick may be nearly over).
pub fn ticks_for(deadline: Duration) -> u64 {
    let ticks = u64::try_from(deadline.as_nanos().div_ceil(TICK.as_nanos())).unwrap_or(u64::MAX);
    ticks.clamp(1, u64::MAX / 4) + 1
}
