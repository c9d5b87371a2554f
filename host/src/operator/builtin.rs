//! The host's built-in reducers: `count`, `sum`, `min` and `max`.
//!
//! Values are decimal text (`"42"`, `"-3.5"`): integers are added as `i64`
//! (overflow is an error, never a silent wrap), anything with a fraction or
//! exponent as `f64`. Results are decimal text again, so they print and
//! write as they are.
//!
//! Between the map-side combine and the merge after the shuffle, partial
//! results travel in a binary form of their own ([`Accumulator::partial`]):
//! counts and sums stay integers, are neither formatted nor parsed on the
//! way, and are written as text once, by the merge. The merge takes decimal
//! text too (a window's stored results, older checkpoints).

use std::cmp::Ordering;
use std::fmt;

use crate::config::BuiltinReducer;

/// A decimal number read from a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer.
    Int(i64),
    /// A number with a fraction or exponent.
    Float(f64),
}

impl Number {
    /// Reads decimal text (surrounding ASCII whitespace allowed).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?.trim();
        if let Ok(int) = text.parse::<i64>() {
            return Some(Self::Int(int));
        }
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Self::Float)
    }

    fn as_f64(self) -> f64 {
        match self {
            Self::Int(i) => i as f64,
            Self::Float(f) => f,
        }
    }

    /// `self + other`; `None` when an integer sum overflows.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a.checked_add(b).map(Self::Int),
            (a, b) => Some(Self::Float(a.as_f64() + b.as_f64())),
        }
    }

    /// `self - other`; `None` when an integer difference overflows.
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a.checked_sub(b).map(Self::Int),
            (a, b) => Some(Self::Float(a.as_f64() - b.as_f64())),
        }
    }

    fn compare(self, other: Self) -> Ordering {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a.cmp(&b),
            (a, b) => a.as_f64().total_cmp(&b.as_f64()),
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
        }
    }
}

/// The running value of one key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accumulator {
    /// Records counted so far.
    Count(u64),
    /// Sum, smallest or largest value so far.
    Number(Number),
}

/// First byte of a partial result in binary form: `0xFF` never starts
/// UTF-8 text, so a merge tells a binary partial from a decimal one by it.
const PARTIAL_MARK: u8 = 0xFF;

/// Bytes of a partial result in binary form: the mark, a tag, 8 bytes.
pub const PARTIAL_BYTES: usize = 10;

impl Accumulator {
    /// The accumulator in the binary form partial results travel in from a
    /// combine to its merge: the mark, a tag (`c` count, `i` integer, `f`
    /// float) and the number's 8 little-endian bytes.
    #[inline]
    pub fn partial(&self) -> [u8; PARTIAL_BYTES] {
        let (tag, bits) = match *self {
            Self::Count(count) => (b'c', count.to_le_bytes()),
            Self::Number(Number::Int(int)) => (b'i', int.to_le_bytes()),
            Self::Number(Number::Float(float)) => (b'f', float.to_bits().to_le_bytes()),
        };
        let mut bytes = [0u8; PARTIAL_BYTES];
        bytes[0] = PARTIAL_MARK;
        bytes[1] = tag;
        bytes[2..].copy_from_slice(&bits);
        bytes
    }

    /// Reads a partial result written by [`Accumulator::partial`]; `None`
    /// for anything else (decimal text).
    #[inline]
    pub fn from_partial(value: &[u8]) -> Option<Self> {
        if value.len() != PARTIAL_BYTES || value[0] != PARTIAL_MARK {
            return None;
        }
        let bits: [u8; 8] = value[2..].try_into().expect("8 bytes");
        match value[1] {
            b'c' => Some(Self::Count(u64::from_le_bytes(bits))),
            b'i' => Some(Self::Number(Number::Int(i64::from_le_bytes(bits)))),
            b'f' => Some(Self::Number(Number::Float(f64::from_bits(u64::from_le_bytes(
                bits,
            ))))),
            _ => None,
        }
    }
}

/// Why a value cannot be reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    /// The value is not decimal text.
    NotANumber,
    /// An integer sum overflowed.
    Overflow,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotANumber => "is not a decimal number",
            Self::Overflow => "makes the sum overflow a 64-bit integer",
        })
    }
}

/// The inverse of a built-in `count` or `sum` for windows: `current - leaving`,
/// both partial results as decimal text. `None` for `min` and `max`, which
/// have no inverse.
pub fn subtract(
    reducer: BuiltinReducer,
    current: &[u8],
    leaving: &[u8],
) -> Option<Result<Number, ValueError>> {
    if !matches!(reducer, BuiltinReducer::Count | BuiltinReducer::Sum) {
        return None;
    }
    let (Some(a), Some(b)) = (Number::parse(current), Number::parse(leaving)) else {
        return Some(Err(ValueError::NotANumber));
    };
    Some(a.checked_sub(b).ok_or(ValueError::Overflow))
}

/// Starts an accumulator from the first value of a key. `merging` is true
/// after the shuffle, when values are partial results (a `count` then sums
/// the partial counts).
pub fn start(reducer: BuiltinReducer, value: &[u8], merging: bool) -> Result<Accumulator, ValueError> {
    if merging && let Some(partial) = Accumulator::from_partial(value) {
        return Ok(partial);
    }
    match (reducer, merging) {
        (BuiltinReducer::Count, false) => Ok(Accumulator::Count(1)),
        (BuiltinReducer::Count, true) => {
            let text = std::str::from_utf8(value).map_err(|_| ValueError::NotANumber)?;
            text.trim()
                .parse()
                .map(Accumulator::Count)
                .map_err(|_| ValueError::NotANumber)
        }
        _ => Number::parse(value)
            .map(Accumulator::Number)
            .ok_or(ValueError::NotANumber),
    }
}

/// Folds one more value into `accumulator`.
#[inline]
pub fn fold(
    reducer: BuiltinReducer,
    accumulator: &mut Accumulator,
    value: &[u8],
    merging: bool,
) -> Result<(), ValueError> {
    if merging && let Some(partial) = Accumulator::from_partial(value) {
        return merge(reducer, accumulator, partial);
    }
    match accumulator {
        Accumulator::Count(count) => {
            let add = if merging {
                let text = std::str::from_utf8(value).map_err(|_| ValueError::NotANumber)?;
                text.trim().parse::<u64>().map_err(|_| ValueError::NotANumber)?
            } else {
                1
            };
            *count = count.checked_add(add).ok_or(ValueError::Overflow)?;
        }
        Accumulator::Number(current) => {
            let value = Number::parse(value).ok_or(ValueError::NotANumber)?;
            fold_number(reducer, current, value)?;
        }
    }
    Ok(())
}

/// Folds a partial result of the same reducer into `accumulator`.
#[inline]
fn merge(
    reducer: BuiltinReducer,
    accumulator: &mut Accumulator,
    partial: Accumulator,
) -> Result<(), ValueError> {
    match (accumulator, partial) {
        (Accumulator::Count(count), Accumulator::Count(more)) => {
            *count = count.checked_add(more).ok_or(ValueError::Overflow)?;
        }
        (Accumulator::Number(current), Accumulator::Number(value)) => fold_number(reducer, current, value)?,
        // Partials of one reducer are all counts or all numbers.
        _ => return Err(ValueError::NotANumber),
    }
    Ok(())
}

fn fold_number(reducer: BuiltinReducer, current: &mut Number, value: Number) -> Result<(), ValueError> {
    *current = match reducer {
        BuiltinReducer::Sum => current.checked_add(value).ok_or(ValueError::Overflow)?,
        BuiltinReducer::Min if value.compare(*current) == Ordering::Less => value,
        BuiltinReducer::Max if value.compare(*current) == Ordering::Greater => value,
        _ => *current,
    };
    Ok(())
}

impl fmt::Display for Accumulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(count) => write!(f, "{count}"),
            Self::Number(number) => write!(f, "{number}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reduce(reducer: BuiltinReducer, values: &[&str], merging: bool) -> Result<String, ValueError> {
        let mut acc = start(reducer, values[0].as_bytes(), merging)?;
        for value in &values[1..] {
            fold(reducer, &mut acc, value.as_bytes(), merging)?;
        }
        Ok(acc.to_string())
    }

    #[test]
    fn builtins() {
        assert_eq!(
            reduce(BuiltinReducer::Count, &["a", "b", "c"], false).unwrap(),
            "3"
        );
        assert_eq!(reduce(BuiltinReducer::Count, &["2", " 5 "], true).unwrap(), "7");
        assert_eq!(
            reduce(BuiltinReducer::Sum, &["1", "2", "-4"], false).unwrap(),
            "-1"
        );
        assert_eq!(reduce(BuiltinReducer::Sum, &["1", "2.5"], false).unwrap(), "3.5");
        assert_eq!(
            reduce(BuiltinReducer::Min, &["3", "-1.5", "2"], false).unwrap(),
            "-1.5"
        );
        assert_eq!(
            reduce(BuiltinReducer::Max, &["3", "10", "2"], false).unwrap(),
            "10"
        );
    }

    #[test]
    fn partials_travel_in_binary_and_merge_with_text() {
        for accumulator in [
            Accumulator::Count(0),
            Accumulator::Count(u64::MAX),
            Accumulator::Number(Number::Int(-7)),
            Accumulator::Number(Number::Float(2.5)),
        ] {
            assert_eq!(
                Accumulator::from_partial(&accumulator.partial()),
                Some(accumulator)
            );
        }
        // Decimal text is never taken for a binary partial.
        assert_eq!(Accumulator::from_partial(b"1234567890"), None);
        let partial = |a: Accumulator| a.partial().to_vec();
        let mut count = start(BuiltinReducer::Count, &partial(Accumulator::Count(3)), true).unwrap();
        fold(BuiltinReducer::Count, &mut count, b"4", true).unwrap();
        fold(
            BuiltinReducer::Count,
            &mut count,
            &partial(Accumulator::Count(5)),
            true,
        )
        .unwrap();
        assert_eq!(count.to_string(), "12");
        let mut sum = start(BuiltinReducer::Sum, b"1.5", true).unwrap();
        fold(
            BuiltinReducer::Sum,
            &mut sum,
            &partial(Accumulator::Number(Number::Int(2))),
            true,
        )
        .unwrap();
        assert_eq!(sum.to_string(), "3.5");
        let mut max = start(
            BuiltinReducer::Max,
            &partial(Accumulator::Number(Number::Int(i64::MAX))),
            true,
        )
        .unwrap();
        fold(BuiltinReducer::Max, &mut max, b"3", true).unwrap();
        assert_eq!(max.to_string(), i64::MAX.to_string());
        let mut sum = start(
            BuiltinReducer::Sum,
            &partial(Accumulator::Number(Number::Int(i64::MAX))),
            true,
        )
        .unwrap();
        assert_eq!(
            fold(
                BuiltinReducer::Sum,
                &mut sum,
                &partial(Accumulator::Number(Number::Int(1))),
                true
            ),
            Err(ValueError::Overflow)
        );
    }

    #[test]
    fn bad_values_are_errors() {
        assert_eq!(
            reduce(BuiltinReducer::Sum, &["1", "x"], false),
            Err(ValueError::NotANumber)
        );
        assert_eq!(
            reduce(BuiltinReducer::Sum, &["9223372036854775807", "1"], false),
            Err(ValueError::Overflow)
        );
        assert_eq!(
            reduce(BuiltinReducer::Count, &["x"], true),
            Err(ValueError::NotANumber)
        );
        assert_eq!(
            reduce(BuiltinReducer::Max, &["nan"], false),
            Err(ValueError::NotANumber)
        );
    }
}
