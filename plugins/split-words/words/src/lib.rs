//! Word splitting for `split-words`, in plain Rust with no dependency (and
//! no `std`): the plugin compiles it to Wasm, and the host's native twin of
//! the plugin depends on this crate too, so `weir bench` compares one
//! algorithm compiled two ways.

#![cfg_attr(not(test), no_std)]

/// `0x01` in every byte.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Calls `emit` with each word of `value`, in order.
///
/// Eight bytes at a time: one bit per byte says whether it is a space, and
/// the bits where that changes from one byte to the next are the words'
/// starts and ends, taken lowest first. A five-letter word costs two such
/// edges and most of one eight-byte step.
#[inline(always)]
pub fn for_each_word(value: &[u8], mut emit: impl FnMut(&[u8])) {
    const BETWEEN_WORDS: usize = usize::MAX;
    let len = value.len();
    let mut word_start = BETWEEN_WORDS;
    // Bit 0: whether the byte before the current eight is a space (the
    // value's start counts as one).
    let mut space_before = 1u64;
    let mut at = 0;
    // Up to and including `len`: the padding's first space ends a word that
    // runs to the end, so `emit` has a single call site (and is inlined).
    while at <= len {
        let bytes = load_padded(value, at);
        if bytes & HIGHS != 0 {
            let from = if word_start == BETWEEN_WORDS {
                at
            } else {
                word_start
            };
            return for_each_word_unicode(&value[from..], emit);
        }
        // Bit 8k set where byte k is a space (bytes past the end are).
        let spaces = space_bits(bytes) >> 7;
        let mut edges = (spaces ^ ((spaces << 8) | space_before)) & ONES;
        space_before = spaces >> 56;
        // One iteration per word: its start (unless it began in an earlier
        // eight bytes), then its end.
        while edges != 0 {
            if word_start == BETWEEN_WORDS {
                word_start = at + lowest_byte(edges);
                edges &= edges - 1;
                if edges == 0 {
                    break;
                }
            }
            let end = at + lowest_byte(edges);
            edges &= edges - 1;
            emit(&value[word_start..end]);
            word_start = BETWEEN_WORDS;
        }
        at += 8;
    }
}

/// The high bit of each byte of `bytes` that is ASCII whitespace (what
/// `u8::is_ascii_whitespace` accepts, plus vertical tab, like
/// `char::is_whitespace`). Every byte of `bytes` must be below 0x80: no
/// addition below can then carry into the next byte.
#[inline(always)]
fn space_bits(bytes: u64) -> u64 {
    // High bit set where the byte is >= 0x09, and where it is >= 0x0e.
    let from_tab = bytes + ONES * (0x80 - 0x09);
    let past_cr = bytes + ONES * (0x80 - 0x0e);
    // High bit clear exactly where the byte is 0x20.
    let not_space = (bytes ^ (ONES * 0x20)) + ONES * 0x7f;
    ((from_tab & !past_cr) | !not_space) & HIGHS
}

/// The index of the lowest byte with a bit set in `bits`.
#[inline(always)]
fn lowest_byte(bits: u64) -> usize {
    (bits.trailing_zeros() / 8) as usize
}

/// The eight bytes of `value` from `at` as a little-endian `u64`, with a
/// space in place of each byte past the end.
#[inline(always)]
fn load_padded(value: &[u8], at: usize) -> u64 {
    const SPACES: u64 = ONES * 0x20;
    let rest = value.get(at..).unwrap_or_default();
    if let Some(chunk) = rest.first_chunk::<8>() {
        return u64::from_le_bytes(*chunk);
    }
    if rest.is_empty() {
        return SPACES;
    }
    let len = value.len();
    if let Some(tail) = value.last_chunk::<8>() {
        // The value's last eight bytes, shifted down so that `at` is the
        // lowest byte (`rest` is 1 to 7 bytes, so the shift is 8 to 56).
        let shift = 8 * (at + 8 - len) as u32;
        return (u64::from_le_bytes(*tail) >> shift) | (SPACES << (64 - shift));
    }
    let mut bytes = SPACES;
    for (k, &byte) in rest.iter().enumerate() {
        bytes = (bytes & !(0xff << (8 * k))) | (u64::from(byte) << (8 * k));
    }
    bytes
}

/// The general case, a byte at a time: words separated by ASCII whitespace;
/// a word with non-ASCII bytes is split again on Unicode whitespace when it
/// is UTF-8, and kept whole when it is not.
#[inline(never)]
fn for_each_word_unicode(value: &[u8], mut emit: impl FnMut(&[u8])) {
    let mut i = 0;
    while i < value.len() {
        while i < value.len() && is_space(value[i]) {
            i += 1;
        }
        let start = i;
        // OR of the word's bytes: below 0x80 means pure ASCII.
        let mut high = 0u8;
        while i < value.len() && !is_space(value[i]) {
            high |= value[i];
            i += 1;
        }
        if start == i {
            continue;
        }
        let word = &value[start..i];
        match (high >= 0x80).then(|| core::str::from_utf8(word).ok()).flatten() {
            Some(text) => text.split_whitespace().for_each(|part| emit(part.as_bytes())),
            None => emit(word),
        }
    }
}

/// The ASCII characters that `char::is_whitespace` accepts.
#[inline(always)]
fn is_space(byte: u8) -> bool {
    byte == b' ' || (b'\t'..=b'\r').contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(value: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for_each_word(value, |word| out.push(word.to_vec()));
        out
    }

    /// The definition: split on `char::is_whitespace` when the value is
    /// UTF-8, on ASCII whitespace otherwise.
    fn reference(value: &[u8]) -> Vec<Vec<u8>> {
        match std::str::from_utf8(value) {
            Ok(text) => text.split_whitespace().map(|w| w.as_bytes().to_vec()).collect(),
            Err(_) => value
                .split(|&b| is_space(b))
                .filter(|w| !w.is_empty())
                .flat_map(|w| match std::str::from_utf8(w) {
                    Ok(text) => text.split_whitespace().map(|p| p.as_bytes().to_vec()).collect(),
                    Err(_) => vec![w.to_vec()],
                })
                .collect(),
        }
    }

    #[test]
    fn space_bits_marks_exactly_ascii_whitespace() {
        for byte in 0u8..0x80 {
            let bits = space_bits(u64::from(byte) << 24);
            assert_eq!(bits != 0, is_space(byte), "byte {byte:#04x}");
            assert!(bits == 0 || lowest_byte(bits) == 3);
        }
    }

    #[test]
    fn matches_the_definition_on_every_shape_of_input() {
        let pieces: [&[u8]; 14] = [
            b"a",
            b"word",
            b"longerthaneightbytes",
            b" ",
            b"  ",
            b"\t",
            b"\r\n",
            b"\x0b\x0c",
            b"\xc3\xa9t\xc3\xa9",
            "\u{a0}".as_bytes(),
            "\u{3000}".as_bytes(),
            b"\xff\xfe",
            b"x\x80y",
            b"!~",
        ];
        // Random sequences of up to eight pieces: covers words and gaps across
        // the eight-byte steps, at the start, the end, and in short values.
        let mut state = 7u64;
        for _ in 0..20_000 {
            let mut value = Vec::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut draw = state;
            for _ in 0..(draw % 9) {
                draw /= 9;
                value.extend_from_slice(pieces[(draw % 14) as usize]);
                draw /= 14;
            }
            assert_eq!(
                words(&value),
                reference(&value),
                "{:?}",
                String::from_utf8_lossy(&value)
            );
        }
    }

    #[test]
    fn examples() {
        assert_eq!(
            words(b"the quick  brown\tfox\n"),
            [&b"the"[..], b"quick", b"brown", b"fox"]
        );
        assert_eq!(words(b""), Vec::<Vec<u8>>::new());
        assert_eq!(words(b"         "), Vec::<Vec<u8>>::new());
        assert_eq!(words("a\u{a0}b c".as_bytes()), [&b"a"[..], b"b", b"c"]);
        assert_eq!(words(b"ok \xff\xfe ok"), [&b"ok"[..], b"\xff\xfe", b"ok"]);
    }
}
