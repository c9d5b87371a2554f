//! Test fixture, not a real transform: an identity map that panics (trapping
//! the instance) with the message `panic-on: found <value>` when a record's
//! value equals the trigger. Used by the host's tests of plugin traps.
//!
//! Config:
//! - `trigger`: the value that makes it panic. Default: `panic`.

use weir_guest::Record;

#[weir_guest::map]
fn panic_on(record: Record<'_>) -> &[u8] {
    let trigger = weir_guest::config().get_or("trigger", "panic");
    if record.value() == trigger.as_bytes() {
        panic!("panic-on: found {}", String::from_utf8_lossy(record.value()));
    }
    record.value()
}
