//! Test fixture: an identity map that writes as much as a record asks to
//! the host's log, its stdout or its stderr. Used to check that what a
//! plugin writes is bounded.
//!
//! A value `log COUNT BYTES`, `stdout COUNT BYTES` or `stderr COUNT BYTES`
//! writes `COUNT` messages (lines) of `BYTES` bytes each (`x`s, the first
//! message starting with `first`, the last one with `last`) to that place;
//! the log at warn level. A trailing `panic` panics afterwards. Any other
//! value passes unchanged.

use std::io::Write;

use weir_guest::{Error, Record};

#[weir_guest::map]
fn chatty(record: Record<'_>) -> Result<Vec<u8>, Error> {
    let value = record.value_str()?;
    let words: Vec<&str> = value.split_whitespace().collect();
    if let [place @ ("log" | "stdout" | "stderr"), count, bytes, rest @ ..] = words.as_slice() {
        let count: usize = count.parse().map_err(Error::msg)?;
        let bytes: usize = bytes.parse().map_err(Error::msg)?;
        for index in 0..count {
            let tag = match index {
                0 => "first",
                i if i + 1 == count => "last",
                _ => "",
            };
            let mut message = tag.to_owned();
            message.push_str(&"x".repeat(bytes.saturating_sub(tag.len())));
            match *place {
                "log" => weir_guest::log::warn(&message),
                "stdout" => {
                    let _ = writeln!(std::io::stdout(), "{message}");
                }
                _ => {
                    let _ = writeln!(std::io::stderr(), "{message}");
                }
            }
        }
        if rest == ["panic"] {
            panic!("chatty: panic after writing to {place}");
        }
    }
    Ok(record.value().to_vec())
}
