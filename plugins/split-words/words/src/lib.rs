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
/// Sixteen bytes at a time: one bit per byte says whether it is a space,
/// and the bits where that changes from one byte to the next are the
/// words' starts and ends, taken lowest first. A five-letter word costs two
/// such edges and a third of a sixteen-byte step. The masks come from one
/// SIMD comparison where there is SIMD (Wasm `simd128`, x86-64 SSE2), from
/// two 64-bit word tricks elsewhere.
#[inline(always)]
pub fn for_each_word(value: &[u8], emit: impl FnMut(&[u8])) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: `simd128` is part of the Wasm standard that every engine
    // running Weir plugins implements (wasmtime enables it by default); an
    // engine without it would refuse the module when loading it, never run
    // it wrongly. Nothing else about the call is unsafe.
    unsafe {
        wasm::for_each_word(value, emit)
    }
    #[cfg(not(target_arch = "wasm32"))]
    scan(value, emit, masks)
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    use core::arch::wasm32::*;

    /// [`super::scan`] with the `simd128` masks, compiled with `simd128`.
    #[target_feature(enable = "simd128")]
    pub(super) unsafe fn for_each_word(value: &[u8], emit: impl FnMut(&[u8])) {
        super::scan(value, emit, masks)
    }

    /// Bit `k` of the first mask is set where byte `k` is ASCII whitespace,
    /// of the second where it is not ASCII.
    #[inline(always)]
    fn masks(bytes: &[u8; 16]) -> (u32, u32) {
        // SAFETY: `bytes` is 16 readable bytes; Wasm loads need no alignment.
        let v = unsafe { v128_load(bytes.as_ptr().cast()) };
        let spaces = v128_or(
            u8x16_eq(v, u8x16_splat(b' ')),
            u8x16_le(u8x16_sub(v, u8x16_splat(0x09)), u8x16_splat(0x0d - 0x09)),
        );
        (u32::from(i8x16_bitmask(spaces)), u32::from(i8x16_bitmask(v)))
    }
}

/// Bit `k` of the first mask is set where byte `k` is ASCII whitespace, of
/// the second where it is not ASCII.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn masks(bytes: &[u8; 16]) -> (u32, u32) {
    use core::arch::x86_64::*;
    // SAFETY: SSE2 is part of x86-64; `bytes` is 16 readable bytes and the
    // load is unaligned.
    unsafe {
        let v = _mm_loadu_si128(bytes.as_ptr().cast());
        // `v - 9` wraps; it is at most 4 exactly for tab ..= carriage return.
        let control = _mm_cmpeq_epi8(
            _mm_subs_epu8(_mm_sub_epi8(v, _mm_set1_epi8(0x09)), _mm_set1_epi8(0x0d - 0x09)),
            _mm_setzero_si128(),
        );
        let spaces = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8)), control);
        (_mm_movemask_epi8(spaces) as u32, _mm_movemask_epi8(v) as u32)
    }
}

/// The masks of [`masks`] from two 64-bit words (no SIMD).
#[cfg(not(any(target_arch = "x86_64", target_arch = "wasm32")))]
#[inline(always)]
fn masks(bytes: &[u8; 16]) -> (u32, u32) {
    swar_masks(bytes)
}

/// The masks of [`masks`] from two 64-bit words: the portable fallback.
#[inline(always)]
#[cfg_attr(any(target_arch = "x86_64", target_arch = "wasm32"), allow(dead_code))]
fn swar_masks(bytes: &[u8; 16]) -> (u32, u32) {
    let (low, high) = bytes.split_at(8);
    let word = |half: &[u8]| u64::from_le_bytes(half.try_into().expect("8 bytes"));
    let (low, high) = (word(low), word(high));
    // One bit per byte: the high bit of byte k moved to bit k.
    let gather = |bits: u64| ((bits >> 7) & ONES).wrapping_mul(0x0102_0408_1020_4080) >> 56;
    let non_ascii = (gather(low & HIGHS) | gather(high & HIGHS) << 8) as u32;
    if non_ascii != 0 {
        // `space_bits` needs ASCII; the caller leaves for the byte loop.
        return (0, non_ascii);
    }
    let spaces = gather(space_bits(low)) | gather(space_bits(high)) << 8;
    (spaces as u32, 0)
}

/// The word loop over sixteen-byte steps, with `masks` giving each step's
/// whitespace and non-ASCII bits.
#[inline(always)]
fn scan(value: &[u8], mut emit: impl FnMut(&[u8]), masks: impl Fn(&[u8; 16]) -> (u32, u32)) {
    const BETWEEN_WORDS: usize = usize::MAX;
    let len = value.len();
    let mut word_start = BETWEEN_WORDS;
    // Bit 0: whether the byte before the current sixteen is a space (the
    // value's start counts as one).
    let mut space_before = 1u32;
    let mut at = 0;
    // Up to and including `len`: the padding's first space ends a word that
    // runs to the end, so `emit` has a single call site (and is inlined).
    while at <= len {
        let padded;
        let bytes = match value.get(at..at + 16) {
            Some(bytes) => bytes.try_into().expect("16 bytes"),
            None => {
                padded = padded_tail(value, at);
                &padded
            }
        };
        let (spaces, non_ascii) = masks(bytes);
        if non_ascii != 0 {
            let from = if word_start == BETWEEN_WORDS {
                at
            } else {
                word_start
            };
            return for_each_word_unicode(&value[from..], emit);
        }
        let mut edges = (spaces ^ ((spaces << 1) | space_before)) & 0xffff;
        space_before = spaces >> 15;
        // One iteration per word: its start (unless it began in an earlier
        // sixteen bytes), then its end.
        while edges != 0 {
            if word_start == BETWEEN_WORDS {
                word_start = at + edges.trailing_zeros() as usize;
                edges &= edges - 1;
                if edges == 0 {
                    break;
                }
            }
            let end = at + edges.trailing_zeros() as usize;
            edges &= edges - 1;
            emit(&value[word_start..end]);
            word_start = BETWEEN_WORDS;
        }
        at += 16;
    }
}

/// The bytes of `value` from `at` (fewer than sixteen), followed by spaces.
#[inline(always)]
fn padded_tail(value: &[u8], at: usize) -> [u8; 16] {
    let mut padded = [b' '; 16];
    let rest = value.get(at..).unwrap_or_default();
    padded[..rest.len()].copy_from_slice(rest);
    padded
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
            assert!(bits == 0 || bits.trailing_zeros() / 8 == 3);
        }
    }

    #[test]
    fn simd_and_word_masks_agree_on_every_byte_at_every_place() {
        for byte in 0u8..=0xff {
            for place in 0..16 {
                let mut bytes = [b'a'; 16];
                bytes[place] = byte;
                let (spaces, non_ascii) = masks(&bytes);
                assert_eq!(
                    spaces,
                    u32::from(is_space(byte)) << place,
                    "{byte:#04x} at {place}"
                );
                assert_eq!(
                    non_ascii,
                    u32::from(byte >= 0x80) << place,
                    "{byte:#04x} at {place}"
                );
                let (swar_spaces, swar_non_ascii) = swar_masks(&bytes);
                assert_eq!(swar_non_ascii, non_ascii, "{byte:#04x} at {place}");
                if non_ascii == 0 {
                    assert_eq!(swar_spaces, spaces, "{byte:#04x} at {place}");
                }
            }
        }
    }

    #[test]
    fn the_word_fallback_matches_the_definition() {
        let value = b"one two\tthree  \r\nfour five six seven eight nine ten";
        let mut out = Vec::new();
        scan(value, |word| out.push(word.to_vec()), swar_masks);
        assert_eq!(out, reference(value));
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
        // the sixteen-byte steps, at the start, the end, and in short values.
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
