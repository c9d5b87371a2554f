//! Test fixture: a map that loops forever on a record whose value equals the
//! config `trigger` (default `loop`), and passes other records through. Used
//! to check call deadlines.

use weir_guest::{Error, Record};

#[weir_guest::map]
fn spin(record: Record<'_>) -> Result<Vec<u8>, Error> {
    let trigger = weir_guest::config().get_or("trigger", "loop");
    if record.value() == trigger.as_bytes() {
        let mut counter: u64 = 0;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
    Ok(record.value().to_vec())
}
