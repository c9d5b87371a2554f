//! The machinery behind the attribute macros: the generated bindings and the
//! batch loops. Not a public API: the macros' expansions are its only users.

pub use wit_bindgen;

// The worlds `weir:plugin/transform-plugin` and `weir:plugin/reducer-plugin`
// both export `lifecycle`; generating both here would define wit-bindgen's
// `#[macro_export]`ed lifecycle export macro twice in this crate. So the SDK
// generates three partial worlds instead, each exporting a distinct interface:
// a plugin crate invokes the lifecycle export macro plus the transform or the
// reducer one, and the component's world is their union, which is exactly
// `transform-plugin` or `reducer-plugin` (the host only sees interface names).
// Only these three worlds live in this inline package; the interfaces and
// types come from `../wit`.

/// Bindings of `weir:plugin/types` and `weir:plugin/log` (shared by all
/// three), and of the `weir:plugin/transform` export.
pub mod transform_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "
            package weir:guest-sdk;
            world transform-exports {
                import weir:plugin/log@0.1.0;
                export weir:plugin/transform@0.1.0;
            }
        ",
        world: "transform-exports",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_transform",
        default_bindings_module: "weir_guest::__private::transform_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `weir:plugin/reducer` export.
pub mod reducer_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "
            package weir:guest-sdk;
            world reducer-exports {
                import weir:plugin/log@0.1.0;
                export weir:plugin/reducer@0.1.0;
            }
        ",
        world: "reducer-exports",
        with: {
            "weir:plugin/types@0.1.0": super::transform_bindings::weir::plugin::types,
            "weir:plugin/log@0.1.0": super::transform_bindings::weir::plugin::log,
        },
        pub_export_macro: true,
        export_macro_name: "__export_reducer",
        default_bindings_module: "weir_guest::__private::reducer_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `weir:plugin/lifecycle` export.
pub mod lifecycle_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "
            package weir:guest-sdk;
            world lifecycle-exports {
                export weir:plugin/lifecycle@0.1.0;
            }
        ",
        world: "lifecycle-exports",
        with: {
            "weir:plugin/types@0.1.0": super::transform_bindings::weir::plugin::types,
        },
        pub_export_macro: true,
        export_macro_name: "__export_lifecycle",
        default_bindings_module: "weir_guest::__private::lifecycle_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

pub use lifecycle_bindings::exports::weir::plugin::lifecycle::Guest as LifecycleGuest;
pub use reducer_bindings::exports::weir::plugin::reducer::Guest as ReducerGuest;
pub use transform_bindings::exports::weir::plugin::transform::Guest as TransformGuest;
pub use transform_bindings::weir::plugin::types as wit;

use std::cell::Cell;

use crate::{Batch, Config, Emitter, Error, Record, Values};

/// The signature of an `init = ...` function.
pub type InitFn = fn(&Config) -> Result<(), Error>;

/// The version of this SDK, reported by `describe`.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `lifecycle.describe`.
pub fn describe(name: &str, version: &str, kind: wit::PluginKind) -> wit::PluginInfo {
    wit::PluginInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        kind,
        sdk_version: SDK_VERSION.to_owned(),
    }
}

/// `lifecycle.init`: stores the configuration, then runs the plugin's init function.
pub fn init(config: wit::Config, init: Option<InitFn>) -> Result<(), String> {
    let config = crate::config::store(Config::new(config)).map_err(|e| e.to_string())?;
    match init {
        Some(init) => init(config).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Ends a call through `Result` for user functions without a `Result` return type.
#[inline(always)]
pub fn ok<T>(value: T) -> Result<T, Error> {
    Ok(value)
}

/// Converts a user function's error (an [`Error`] or a standard error).
#[inline(always)]
pub fn lift<T, E: Into<Error>>(result: Result<T, E>) -> Result<T, Error> {
    result.map_err(Into::into)
}

/// How much output a per-record transform is expected to produce.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// At most one output record per input record, about the same size.
    OneToOne,
    /// Any number of records per input record (reserves more data).
    Many,
}

fn view(input: &wit::Batch) -> Result<Batch<'_>, wit::ProcessError> {
    Batch::new(&input.data, &input.ends, &input.timestamps, &input.flags)
        .map_err(|e| wit::ProcessError::Batch(e.to_string()))
}

fn record_failure(error: Error, index: usize) -> wit::ProcessError {
    let index = error.record_index().unwrap_or(index);
    wit::ProcessError::Record(wit::RecordFailure {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        message: error.to_string(),
    })
}

fn into_wit(out: Emitter) -> wit::TransformOutput {
    let (data, ends, timestamps, flags) = out.into_parts();
    wit::TransformOutput::Records(wit::Batch {
        data,
        ends,
        timestamps,
        flags,
    })
}

/// The loop of `map`, `filter_map` and `flat_map`: calls `f` once per input
/// record with the output emitter, whose default timestamp is the record's.
#[inline]
pub fn run_per_record(
    input: wit::Batch,
    expect: Expect,
    mut f: impl FnMut(Record<'_>, &mut Emitter) -> Result<(), Error>,
) -> Result<wit::TransformOutput, wit::ProcessError> {
    let batch = view(&input)?;
    let mut out = match expect {
        Expect::OneToOne => Emitter::with_capacity(batch.len(), batch.data_len()),
        Expect::Many => Emitter::with_capacity(batch.len().max(batch.data_len() / 4), 2 * batch.data_len()),
    };
    for record in batch.iter() {
        out.set_default_timestamp(record.timestamp());
        if let Err(error) = f(record, &mut out) {
            return Err(record_failure(error, record.index()));
        }
    }
    Ok(into_wit(out))
}

/// The loop of `filter`: the indices of the records `f` keeps.
#[inline]
pub fn run_filter(
    input: wit::Batch,
    mut f: impl FnMut(Record<'_>) -> Result<bool, Error>,
) -> Result<wit::TransformOutput, wit::ProcessError> {
    let batch = view(&input)?;
    let mut keep = Vec::with_capacity(batch.len());
    for record in batch.iter() {
        match f(record) {
            Ok(true) => keep.push(record.index() as u32),
            Ok(false) => {}
            Err(error) => return Err(record_failure(error, record.index())),
        }
    }
    Ok(wit::TransformOutput::Keep(keep))
}

/// `map_partitions`: one call with the whole batch. The emitter's default
/// timestamp is the batch's largest timestamp.
pub fn run_map_partitions(
    input: wit::Batch,
    f: impl FnOnce(&Batch<'_>, &mut Emitter) -> Result<(), Error>,
) -> Result<wit::TransformOutput, wit::ProcessError> {
    let batch = view(&input)?;
    let mut out = Emitter::with_capacity(batch.len(), batch.data_len());
    out.set_default_timestamp(input.timestamps.iter().copied().max().unwrap_or(0));
    match f(&batch, &mut out) {
        Ok(()) => Ok(into_wit(out)),
        Err(error) => match error.record_index() {
            Some(index) => Err(record_failure(error, index)),
            None => Err(wit::ProcessError::Batch(error.to_string())),
        },
    }
}

fn check_ends(ends: &[u32], limit: usize, what: &str) -> Result<(), wit::ProcessError> {
    let mut previous = 0;
    for &end in ends {
        if end < previous {
            return Err(wit::ProcessError::Batch(format!(
                "malformed values: decreasing {what} ({end} after {previous})"
            )));
        }
        previous = end;
    }
    if previous as usize > limit {
        return Err(wit::ProcessError::Batch(format!(
            "malformed values: {what} {previous} is past the end ({limit})"
        )));
    }
    Ok(())
}

/// The loop of `reduce`: calls `f` once per group; `f` appends the group's
/// combined value to the output buffer.
#[inline]
pub fn run_reduce(
    values: wit::Values,
    group_ends: Vec<u32>,
    mut f: impl FnMut(Values<'_>, &mut Vec<u8>) -> Result<(), Error>,
) -> Result<wit::Values, wit::ProcessError> {
    check_ends(&values.ends, values.data.len(), "value end offset")?;
    check_ends(&group_ends, values.ends.len(), "group end")?;
    let mut data = Vec::with_capacity(values.data.len().min(16 * group_ends.len()));
    let mut ends = Vec::with_capacity(group_ends.len());
    let last_taken = Cell::new(0);
    let mut first = 0usize;
    for &group_end in &group_ends {
        let group_end = group_end as usize;
        let start = if first == 0 { 0 } else { values.ends[first - 1] };
        last_taken.set(first);
        let group = Values::new(
            &values.data,
            &values.ends[first..group_end],
            start,
            first,
            Some(&last_taken),
        );
        if let Err(error) = f(group, &mut data) {
            return Err(record_failure(error, last_taken.get()));
        }
        ends.push(u32::try_from(data.len()).expect("reduce output over 4 GiB"));
        first = group_end;
    }
    Ok(wit::Values { data, ends })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IntoOutput;

    fn input(records: &[(Option<&str>, &str, i64)]) -> wit::Batch {
        let mut out = Emitter::new();
        for (key, value, ts) in records {
            out.emit_record(key.map(str::as_bytes), value, *ts);
        }
        let (data, ends, timestamps, flags) = out.into_parts();
        wit::Batch {
            data,
            ends,
            timestamps,
            flags,
        }
    }

    fn records(output: wit::TransformOutput) -> Vec<(Option<String>, String, i64)> {
        let wit::TransformOutput::Records(b) = output else {
            panic!("expected records");
        };
        Batch::new(&b.data, &b.ends, &b.timestamps, &b.flags)
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.key_str().unwrap().map(str::to_owned),
                    r.value_str().unwrap().to_owned(),
                    r.timestamp(),
                )
            })
            .collect()
    }

    #[test]
    fn per_record_loop() {
        let batch = input(&[(Some("k"), "a b", 1), (None, "c", 2)]);
        let output = run_per_record(batch, Expect::Many, |record, out| {
            for word in record.value_str()?.split(' ') {
                out.emit_keyed(word, word.to_uppercase());
            }
            record.value_str()?.emit_into(&record, out);
            Ok(())
        })
        .unwrap();
        let s = |x: &str| x.to_owned();
        assert_eq!(
            records(output),
            [
                (Some(s("a")), s("A"), 1),
                (Some(s("b")), s("B"), 1),
                (Some(s("k")), s("a b"), 1),
                (Some(s("c")), s("C"), 2),
                (None, s("c"), 2),
            ]
        );
    }

    #[test]
    fn record_errors_name_the_record() {
        let batch = input(&[(None, "ok", 1), (None, "bad", 2)]);
        let error = run_per_record(batch, Expect::OneToOne, |record, out| {
            if record.value() == b"bad" {
                return Err(Error::msg("refused"));
            }
            out.emit(record.value());
            Ok(())
        })
        .unwrap_err();
        match error {
            wit::ProcessError::Record(failure) => {
                assert_eq!(failure.index, 1);
                assert_eq!(failure.message, "refused");
            }
            wit::ProcessError::Batch(message) => panic!("batch error {message}"),
        }
    }

    #[test]
    fn malformed_batches_are_batch_errors() {
        let mut batch = input(&[(None, "x", 1)]);
        batch.ends.pop();
        assert!(matches!(
            run_filter(batch, |_| Ok(true)),
            Err(wit::ProcessError::Batch(_))
        ));
    }

    #[test]
    fn filter_keeps_indices() {
        let batch = input(&[(None, "a", 1), (None, "bb", 2), (None, "c", 3)]);
        let output = run_filter(batch, |r| Ok(r.value().len() == 1)).unwrap();
        assert!(matches!(output, wit::TransformOutput::Keep(keep) if keep == [0, 2]));
    }

    #[test]
    fn map_partitions_sees_the_batch() {
        let batch = input(&[(None, "a", 5), (None, "b", 3)]);
        let output = run_map_partitions(batch, |batch, out| {
            out.emit(batch.len().to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(records(output), [(None, "2".to_owned(), 5)]);

        let batch = input(&[(None, "a", 5)]);
        let error = run_map_partitions(batch, |_, _| Err(Error::msg("whole"))).unwrap_err();
        assert!(matches!(error, wit::ProcessError::Batch(m) if m == "whole"));
    }

    #[test]
    fn reduce_groups() {
        let (data, ends) = Values::storage(&[b"1", b"2", b"3", b"x", b"5"]);
        let sum = |values: Values<'_>, out: &mut Vec<u8>| {
            let mut total = 0i64;
            for value in values {
                total += std::str::from_utf8(value)
                    .unwrap()
                    .parse::<i64>()
                    .map_err(|_| Error::msg("nan"))?;
            }
            crate::IntoValue::append_to(total, out);
            Ok(())
        };
        let output = run_reduce(
            wit::Values {
                data: data.clone(),
                ends: ends.clone(),
            },
            vec![2, 3],
            sum,
        )
        .unwrap();
        assert_eq!(output.data, b"33");
        assert_eq!(output.ends, [1, 2]);

        let error = run_reduce(wit::Values { data, ends }, vec![2, 5], sum).unwrap_err();
        assert!(matches!(error, wit::ProcessError::Record(f) if f.index == 3 && f.message == "nan"));
    }

    #[test]
    fn reduce_rejects_bad_groups() {
        let (data, ends) = Values::storage(&[b"1"]);
        let error = run_reduce(wit::Values { data, ends }, vec![2], |_, _| Ok(())).unwrap_err();
        assert!(matches!(error, wit::ProcessError::Batch(_)));
    }

    #[test]
    fn describe_reports_the_sdk_version() {
        let info = describe("p", "1.2.3", wit::PluginKind::Filter);
        assert_eq!(info.sdk_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.name, "p");
    }
}
