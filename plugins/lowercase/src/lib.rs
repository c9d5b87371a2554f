//! Map: lowercases each record's value, and its key when it has one; the
//! timestamp is kept.
//!
//! UTF-8 text is lowercased with Unicode rules; bytes that are not UTF-8 are
//! ASCII-lowercased only (other bytes pass through unchanged).
//!
//! Config: none.

use std::borrow::Cow;

use weir_guest::{Output, Record};

#[weir_guest::map]
fn lowercase(record: Record<'_>) -> Output<Cow<'_, [u8]>, Cow<'_, [u8]>> {
    Output {
        key: record.key().map(lower),
        value: lower(record.value()),
        timestamp: record.timestamp(),
    }
}

/// Lowercases `bytes`, borrowing them when they are already lowercase ASCII.
fn lower(bytes: &[u8]) -> Cow<'_, [u8]> {
    if bytes.is_ascii() {
        if bytes.iter().any(u8::is_ascii_uppercase) {
            Cow::Owned(bytes.to_ascii_lowercase())
        } else {
            Cow::Borrowed(bytes)
        }
    } else {
        match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Owned(text.to_lowercase().into_bytes()),
            Err(_) => Cow::Owned(bytes.to_ascii_lowercase()),
        }
    }
}
