//! Map-partitions: keeps the `k` records with the largest counts of each
//! partition, e.g. the most frequent words after a `reduce-by-key` count.
//!
//! Input records are key = word, value = count as decimal text (an `i64`;
//! surrounding whitespace is ignored). The output is the `k` records with the
//! largest counts (fewer when the partition has fewer records), in
//! descending order of count; equal counts are ordered by key, smaller
//! (bytewise) first, a record without a key before any key. Output records
//! are the input records unchanged: key, value and timestamp.
//!
//! A value that is not a decimal integer fails that record, with an error
//! quoting it.
//!
//! The ranking is per partition: for a global top `k`, feed the stage one
//! partition (a `repartition` stage with `partitions = 1`, or a
//! `reduce-by-key` with `partitions = 1`).
//!
//! Config:
//! - `k`: how many records to keep, a positive integer. Default: 3.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::OnceLock;

use weir_guest::{Batch, Config, Emitter, Error};

/// The `k` used when the `k` key is not set.
const DEFAULT_K: usize = 3;

static K: OnceLock<usize> = OnceLock::new();

fn setup(config: &Config) -> Result<(), Error> {
    let k = parse_k(config)?;
    K.set(k).map_err(|_| Error::msg("top-k: init called twice"))
}

fn parse_k(config: &Config) -> Result<usize, Error> {
    let k = config
        .parse::<usize>("k")
        .map_err(|e| e.context("top-k"))?
        .unwrap_or(DEFAULT_K);
    if k == 0 {
        weir_guest::bail!("top-k: config key `k` must be a positive integer, not 0");
    }
    Ok(k)
}

#[weir_guest::map_partitions(init = setup)]
fn top_k(input: &Batch<'_>, out: &mut Emitter) -> Result<(), Error> {
    let k = *K.get().unwrap_or(&DEFAULT_K);
    for index in top(input, k)? {
        let record = input.get(index).expect("an index of the batch");
        out.emit_record(record.key(), record.value(), record.timestamp());
    }
    Ok(())
}

/// The indices of the `k` best records of `input`, best first.
fn top(input: &Batch<'_>, k: usize) -> Result<Vec<usize>, Error> {
    // A min-heap of the best `k` so far: its top is the worst of them.
    let mut best: BinaryHeap<Reverse<Ranked<'_>>> = BinaryHeap::with_capacity(k.min(input.len()) + 1);
    for record in input {
        let ranked = Ranked {
            count: count(record.value()).map_err(|e| e.at_record(record.index()))?,
            key: record.key(),
            index: record.index(),
        };
        if best.len() < k {
            best.push(Reverse(ranked));
        } else if best.peek().is_some_and(|worst| ranked > worst.0) {
            best.pop();
            best.push(Reverse(ranked));
        }
    }
    // Ascending order of `Reverse`: the best record first.
    Ok(best.into_sorted_vec().into_iter().map(|r| r.0.index).collect())
}

/// A record's rank: the greater, the better.
#[derive(Debug, PartialEq, Eq)]
struct Ranked<'a> {
    count: i64,
    key: Option<&'a [u8]>,
    index: usize,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        // A larger count, then a smaller key, then an earlier record.
        self.count
            .cmp(&other.count)
            .then_with(|| other.key.cmp(&self.key))
            .then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A count, as decimal text.
fn count(value: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| {
            Error::msg(format!(
                "top-k: count is not a decimal integer: {:?}",
                String::from_utf8_lossy(value)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[(Option<&str>, &str)]) -> Emitter {
        let mut input = Emitter::new();
        for (i, (key, value)) in records.iter().enumerate() {
            input.emit_record(key.map(str::as_bytes), value, i as i64);
        }
        input
    }

    fn keys(input: &Emitter, k: usize) -> Vec<Option<String>> {
        let batch = input.as_batch();
        top(&batch, k)
            .unwrap()
            .into_iter()
            .map(|i| batch.get(i).unwrap().key_str().unwrap().map(str::to_owned))
            .collect()
    }

    #[test]
    fn largest_counts_first_then_smaller_keys() {
        let input = batch(&[
            (Some("b"), "5"),
            (Some("a"), "5"),
            (Some("c"), "9"),
            (Some("d"), " 1\n"),
            (None, "5"),
            (Some("e"), "-2"),
        ]);
        let s = |k: &str| Some(k.to_owned());
        assert_eq!(keys(&input, 3), [s("c"), None, s("a")]);
        assert_eq!(keys(&input, 1), [s("c")]);
        assert_eq!(keys(&input, 10), [s("c"), None, s("a"), s("b"), s("d"), s("e")]);
        assert!(keys(&batch(&[]), 3).is_empty());
    }

    #[test]
    fn output_records_are_unchanged() {
        let input = batch(&[(Some("x"), "1"), (Some("y"), " 2 ")]);
        let mut out = Emitter::new();
        top_k(&input.as_batch(), &mut out).unwrap();
        let records: Vec<_> = out
            .as_batch()
            .iter()
            .map(|r| (r.key(), r.value(), r.timestamp()))
            .collect();
        assert_eq!(
            records,
            [(Some(&b"y"[..]), &b" 2 "[..], 1), (Some(&b"x"[..]), &b"1"[..], 0)]
        );
    }

    #[test]
    fn a_bad_count_fails_its_record() {
        let input = batch(&[(Some("x"), "1"), (Some("y"), "many")]);
        let error = top(&input.as_batch(), 3).unwrap_err();
        assert_eq!(error.record_index(), Some(1));
        assert_eq!(
            error.message(),
            r#"top-k: count is not a decimal integer: "many""#
        );
    }

    #[test]
    fn k_must_be_a_positive_integer() {
        assert_eq!(parse_k(&Config::default()).unwrap(), 3);
        assert_eq!(parse_k(&Config::new([("k", " 10 ")])).unwrap(), 10);
        for bad in ["0", "-1", "x", "1.5", ""] {
            let error = parse_k(&Config::new([("k", bad)])).unwrap_err();
            assert!(error.message().starts_with("top-k: "), "{error}");
        }
    }
}
