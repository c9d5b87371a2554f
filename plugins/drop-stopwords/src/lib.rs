//! Filter: drops the records whose value, trimmed and compared
//! case-insensitively, is a stopword; keeps every other record unchanged.
//!
//! Config:
//! - `stopwords`: a comma-separated list of stopwords (case-insensitive).
//!   Default: a short English list (`the, a, an, and, or, of, to, in, is,
//!   it, ...`, see [`DEFAULT_STOPWORDS`]). An empty value drops nothing.

use std::collections::HashSet;
use std::sync::OnceLock;

use weir_guest::{Config, Error, Record};

/// The stopwords used when the `stopwords` key is not set.
pub const DEFAULT_STOPWORDS: &str = "the, a, an, and, or, but, not, of, to, in, on, at, by, \
     for, from, with, as, is, are, was, were, be, been, it, its, this, that, these, those";

/// The lowercased stopwords, parsed once by `init`.
struct Stopwords {
    words: HashSet<Box<[u8]>>,
    /// The length of the longest stopword, in bytes: longer values are kept
    /// without further work.
    max_len: usize,
}

static STOPWORDS: OnceLock<Stopwords> = OnceLock::new();

fn setup(config: &Config) -> Result<(), Error> {
    let list = weir_guest::split_list(config.get_or("stopwords", DEFAULT_STOPWORDS));
    let words: HashSet<Box<[u8]>> = list
        .iter()
        .map(|word| lower(word.as_bytes()).into_boxed_slice())
        .collect();
    let max_len = words.iter().map(|w| w.len()).max().unwrap_or(0);
    STOPWORDS
        .set(Stopwords { words, max_len })
        .map_err(|_| Error::msg("drop-stopwords: init called twice"))
}

#[weir_guest::filter(init = setup)]
fn drop_stopwords(record: Record<'_>) -> Result<bool, Error> {
    let stopwords = STOPWORDS
        .get()
        .ok_or_else(|| Error::msg("drop-stopwords: not initialized"))?;
    let value = trim(record.value());
    // Lowercasing shrinks UTF-8 text at most threefold (the Kelvin sign, 3
    // bytes, becomes `k`): longer values cannot be stopwords.
    if value.len() > 3 * stopwords.max_len {
        return Ok(true);
    }
    let mut buffer = [0u8; 64];
    let is_stopword = if value.is_ascii() && value.len() <= buffer.len() {
        let lowered = &mut buffer[..value.len()];
        lowered.copy_from_slice(value);
        lowered.make_ascii_lowercase();
        stopwords.words.contains(&*lowered)
    } else {
        stopwords.words.contains(lower(value).as_slice())
    };
    Ok(!is_stopword)
}

/// Lowercases UTF-8 text with Unicode rules, other bytes as ASCII.
fn lower(bytes: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_lowercase().into_bytes(),
        Err(_) => bytes.to_ascii_lowercase(),
    }
}

/// Trims whitespace: Unicode whitespace for UTF-8 text, ASCII otherwise.
fn trim(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.trim().as_bytes(),
        Err(_) => bytes.trim_ascii(),
    }
}
