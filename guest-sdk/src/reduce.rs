//! Reducers: [`Values`], the values of one group, and [`IntoValue`], what a
//! `reduce` function may return.

use std::borrow::Cow;
use std::cell::Cell;
use std::io::Write as _;

use crate::emit::AsBytes;

/// The values of one group (one key), as byte slices borrowed from the input.
///
/// A reducer's group has at least one value. When the reduce function
/// fails, the SDK reports the last value it took from this iterator (or the
/// group's first value if it took none) as the failing one.
///
/// An [`update_state`](macro@crate::update_state) function gets the new
/// values of a key in arrival order; they are empty only when the key timed
/// out.
#[derive(Clone, Debug)]
pub struct Values<'a> {
    data: &'a [u8],
    /// End offsets of the values left.
    ends: &'a [u32],
    /// Start offset of the next value.
    start: u32,
    /// Index of the next value in the whole input list.
    next_index: usize,
    /// Where to record the index of each value handed out.
    last_taken: Option<&'a Cell<usize>>,
}

impl<'a> Values<'a> {
    /// The values `data[start..ends[0]]`, `data[ends[0]..ends[1]]`, ...;
    /// offsets must be non-decreasing and within `data`.
    pub(crate) fn new(
        data: &'a [u8],
        ends: &'a [u32],
        start: u32,
        first_index: usize,
        last_taken: Option<&'a Cell<usize>>,
    ) -> Self {
        Self {
            data,
            ends,
            start,
            next_index: first_index,
            last_taken,
        }
    }

    /// Values from a list of slices: for unit tests of reduce functions.
    ///
    /// ```
    /// let storage = weir_guest::Values::storage(&[b"1", b"22"]);
    /// let values = weir_guest::Values::from_storage(&storage);
    /// assert_eq!(values.collect::<Vec<_>>(), [&b"1"[..], &b"22"[..]]);
    /// ```
    pub fn from_storage(storage: &'a (Vec<u8>, Vec<u32>)) -> Self {
        Self::new(&storage.0, &storage.1, 0, 0, None)
    }

    /// Flattens values into the buffers [`Values::from_storage`] reads.
    pub fn storage(values: &[&[u8]]) -> (Vec<u8>, Vec<u32>) {
        let mut data = Vec::new();
        let mut ends = Vec::with_capacity(values.len());
        for value in values {
            data.extend_from_slice(value);
            ends.push(u32::try_from(data.len()).expect("values over 4 GiB"));
        }
        (data, ends)
    }

    /// The values left, as UTF-8 text; an error for the first value that is
    /// not valid UTF-8.
    pub fn strs(self) -> impl Iterator<Item = Result<&'a str, crate::Error>> {
        self.map(|value| {
            std::str::from_utf8(value).map_err(|e| {
                crate::Error::msg(format!(
                    "value {:?} is not UTF-8: {e}",
                    String::from_utf8_lossy(value)
                ))
            })
        })
    }
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let (&end, rest) = self.ends.split_first()?;
        let value = &self.data[self.start as usize..end as usize];
        self.ends = rest;
        self.start = end;
        if let Some(cell) = self.last_taken {
            cell.set(self.next_index);
        }
        self.next_index += 1;
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.ends.len(), Some(self.ends.len()))
    }
}

impl ExactSizeIterator for Values<'_> {}

impl std::iter::FusedIterator for Values<'_> {}

/// What a `reduce` function may return: the combined value of a group.
///
/// Implemented for byte and text types (`Vec<u8>`, `String`, `&[u8]`, `&str`,
/// `Cow` of those) and for numbers, written as decimal text (floats in their
/// shortest form that reads back exactly, `inf`/`NaN` for non-finite ones).
pub trait IntoValue {
    /// Appends the value's bytes to `out`.
    fn append_to(self, out: &mut Vec<u8>);
}

macro_rules! bytes_into_value {
    ($($ty:ty),* $(,)?) => {$(
        impl IntoValue for $ty {
            #[inline]
            fn append_to(self, out: &mut Vec<u8>) {
                out.extend_from_slice(AsBytes::bytes(&self));
            }
        }
    )*};
}

bytes_into_value!(
    Vec<u8>,
    String,
    &[u8],
    &str,
    &Vec<u8>,
    &String,
    Cow<'_, [u8]>,
    Cow<'_, str>,
    Box<[u8]>,
    Box<str>,
);

impl<const N: usize> IntoValue for [u8; N] {
    fn append_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self);
    }
}

macro_rules! number_into_value {
    ($($ty:ty),* $(,)?) => {$(
        impl IntoValue for $ty {
            #[inline]
            fn append_to(self, out: &mut Vec<u8>) {
                write!(out, "{self}").expect("writing to a Vec cannot fail");
            }
        }
    )*};
}

number_into_value!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize, f32, f64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_and_tracks_the_last_value() {
        let data = b"abcdef";
        let ends = [1, 1, 4, 6];
        let cell = Cell::new(usize::MAX);
        let mut values = Values::new(data, &ends[1..], 1, 10, Some(&cell));
        assert_eq!(values.len(), 3);
        assert_eq!(values.next(), Some(&b""[..]));
        assert_eq!(cell.get(), 10);
        assert_eq!(values.next(), Some(&b"bcd"[..]));
        assert_eq!(values.len(), 1);
        assert_eq!(values.next(), Some(&b"ef"[..]));
        assert_eq!(cell.get(), 12);
        assert_eq!(values.next(), None);
    }

    #[test]
    fn into_value() {
        let mut out = Vec::new();
        42i64.append_to(&mut out);
        out.push(b' ');
        (-1.5f64).append_to(&mut out);
        out.push(b' ');
        0.1f64.append_to(&mut out);
        out.push(b' ');
        "x".append_to(&mut out);
        assert_eq!(out, b"42 -1.5 0.1 x");
    }
}
