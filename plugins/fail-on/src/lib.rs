//! Test fixture, not a real transform: an identity map that fails a record
//! with the error `fail-on: refusing <value>` when its value equals the
//! trigger. Used by the host's tests of per-record errors.
//!
//! Config:
//! - `trigger`: the value to refuse. Default: `fail`.

use weir_guest::{Error, Record};

#[weir_guest::map]
fn fail_on(record: Record<'_>) -> Result<&[u8], Error> {
    let trigger = weir_guest::config().get_or("trigger", "fail");
    if record.value() == trigger.as_bytes() {
        weir_guest::bail!("fail-on: refusing {}", String::from_utf8_lossy(record.value()));
    }
    Ok(record.value())
}
