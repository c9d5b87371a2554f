//! The layout rules of flat batches and value lists (`wit/types.wit`), as
//! checks: the host runs them on what a plugin returns, the SDK on what the
//! host passes in, so both sides accept exactly the same buffers.

use core::fmt;

use crate::HAS_KEY;

/// How flat buffers break the layout rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// A batch's columns disagree: it needs one flag and two end offsets per
    /// timestamp.
    Lengths {
        /// Number of timestamps (the number of records).
        timestamps: usize,
        /// Number of flags.
        flags: usize,
        /// Number of end offsets.
        ends: usize,
    },
    /// End offset `at` is smaller than the one before it.
    Backwards {
        /// Its index among the end offsets (at least 1).
        at: usize,
        /// Its value.
        end: u32,
        /// The value of the offset before it.
        previous: u32,
    },
    /// The last end offset is not the end of the data (0 when there is none).
    Uncovered {
        /// The last end offset.
        last: u32,
        /// Where it should be: the data's length.
        len: usize,
    },
    /// A record without a key has a non-empty key range.
    KeyRange {
        /// The record's index.
        record: usize,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayoutError::Lengths {
                timestamps,
                flags,
                ends,
            } => write!(
                f,
                "{timestamps} timestamps, {flags} flags and {ends} end offsets (expected {})",
                2 * timestamps
            ),
            LayoutError::Backwards { at, end, previous } => {
                write!(
                    f,
                    "end offset {at} ({end}) is before the previous one ({previous})"
                )
            }
            LayoutError::Uncovered { last, len } => {
                write!(f, "the offsets end at {last} but the data ends at {len}")
            }
            LayoutError::KeyRange { record } => {
                write!(f, "record {record} has no key but a non-empty key range")
            }
        }
    }
}

impl core::error::Error for LayoutError {}

/// Checks a flat list of end offsets over `len` items: non-decreasing, and
/// the last one (if any) is `len`, so they cover the data exactly.
///
/// `len` is the data's length in bytes for `values.ends` and a batch's
/// `ends`, the number of values for `key-groups.group-ends`.
pub fn check_ends(ends: &[u32], len: usize) -> Result<(), LayoutError> {
    // A branch-free fold over plain slices (the compiler vectorizes it): this
    // runs on every batch that crosses the boundary. The position of a fault
    // is looked for only once there is one.
    let ascending = ends
        .iter()
        .zip(ends.iter().skip(1))
        .fold(true, |ok, (before, after)| ok & (before <= after));
    if !ascending {
        let at = ends.windows(2).position(|pair| pair[0] > pair[1]).unwrap_or(0) + 1;
        return Err(LayoutError::Backwards {
            at,
            end: ends[at],
            previous: ends[at - 1],
        });
    }
    let last = ends.last().copied().unwrap_or(0);
    if last as usize != len {
        return Err(LayoutError::Uncovered { last, len });
    }
    Ok(())
}

/// Checks the buffers of a flat batch (`wit/types.wit`, `record batch`): one
/// flag and two end offsets per timestamp, end offsets that [`check_ends`]
/// accepts over `data`, and an empty key range for every record without a
/// key. A batch that passes can be read without bounds surprises.
pub fn check_batch(data: &[u8], ends: &[u32], timestamps: &[i64], flags: &[u8]) -> Result<(), LayoutError> {
    let records = timestamps.len();
    if flags.len() != records || ends.len() != 2 * records {
        return Err(LayoutError::Lengths {
            timestamps: records,
            flags: flags.len(),
            ends: ends.len(),
        });
    }
    check_ends(ends, data.len())?;
    // A record without a key has an empty key range: its key ends where the
    // previous record's value ends. Record 0's key starts at 0; record i's
    // where record i-1's value ends, `ends[2i-1]`: pairs of `ends[1..]` are
    // (ends[2i-1], ends[2i]).
    let first_ok = flags
        .first()
        .is_none_or(|&flag| flag & HAS_KEY != 0 || ends[0] == 0);
    let key_ranges_ok = flags
        .iter()
        .skip(1)
        .zip(ends.get(1..).unwrap_or_default().chunks_exact(2))
        .fold(first_ok, |ok, (&flag, pair)| {
            ok & ((flag & HAS_KEY != 0) | (pair[0] == pair[1]))
        });
    if !key_ranges_ok {
        let key_start = |record: usize| if record == 0 { 0 } else { ends[2 * record - 1] };
        let record = (0..records)
            .position(|record| flags[record] & HAS_KEY == 0 && key_start(record) != ends[2 * record])
            .unwrap_or(0);
        return Err(LayoutError::KeyRange { record });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_batches() {
        // Record 0: key "k", value "one"; record 1: no key, value "two";
        // record 2: empty key, empty value.
        let ends = [1, 4, 4, 7, 7, 7];
        assert_eq!(check_batch(b"konetwo", &ends, &[10, 20, 30], &[1, 0, 1]), Ok(()));
        assert_eq!(check_batch(&[], &[], &[], &[]), Ok(()));
        assert_eq!(check_batch(&[1, 2], &[0, 1, 1, 2], &[0, 0], &[0, 0]), Ok(()));
        assert_eq!(check_batch(&[1, 2], &[0, 1, 2, 2], &[0, 0], &[0, 1]), Ok(()));
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            check_batch(&[1], &[1, 1], &[0], &[]),
            Err(LayoutError::Lengths {
                timestamps: 1,
                flags: 0,
                ends: 2
            })
        );
        assert_eq!(
            check_batch(&[1], &[1, 0], &[0], &[1]),
            Err(LayoutError::Backwards {
                at: 1,
                end: 0,
                previous: 1
            })
        );
        assert_eq!(
            check_batch(&[1, 2], &[0, 1], &[0], &[0]),
            Err(LayoutError::Uncovered { last: 1, len: 2 })
        );
        assert_eq!(
            check_batch(&[1], &[1, 1], &[0], &[0]),
            Err(LayoutError::KeyRange { record: 0 })
        );
        // The second record has no key but a one-byte key range.
        assert_eq!(
            check_batch(&[1, 2], &[0, 1, 2, 2], &[0, 0], &[0, 0]),
            Err(LayoutError::KeyRange { record: 1 })
        );
    }

    #[test]
    fn ends_must_ascend_and_cover() {
        assert_eq!(check_ends(&[], 0), Ok(()));
        assert_eq!(check_ends(&[0, 2, 2, 5], 5), Ok(()));
        assert_eq!(
            check_ends(&[], 1),
            Err(LayoutError::Uncovered { last: 0, len: 1 })
        );
        assert_eq!(
            check_ends(&[2, 5], 6),
            Err(LayoutError::Uncovered { last: 5, len: 6 })
        );
        assert_eq!(
            check_ends(&[0, 3, 2, 5], 5),
            Err(LayoutError::Backwards {
                at: 2,
                end: 2,
                previous: 3
            })
        );
    }
}
