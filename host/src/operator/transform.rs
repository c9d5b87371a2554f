//! Per-partition transforms: map, flat-map, filter, filter-map and
//! map-partitions, over any [`TransformFn`] (a Wasm plugin or a native Rust
//! function).
//!
//! The operator owns what the function must not get wrong: large partitions
//! are fed to per-record kinds in slices of at most [`MAX_CALL_BYTES`] (so a
//! plugin's memory stays small and warm in cache), filters return indices
//! that the host applies without copying records through the plugin, and the
//! output is checked against the kind (a map returns exactly one record per
//! input record).

use std::fmt;

use super::{Operator, OperatorError, PartitionContext, Planning};
use crate::config::TransformKind;
use crate::record::{Batch, Partition};
use crate::runtime::{PluginError, TransformOutput, TransformWorld};

/// Data bytes fed to a per-record plugin in one call; larger partitions are
/// sliced. Map-partitions always gets its whole partition.
pub const MAX_CALL_BYTES: usize = 4 << 20;

/// A function from a batch to a transform output.
pub trait TransformFn: Send + Sync + fmt::Debug {
    /// Runs the function over `input`; returns the input back with the output.
    fn call(
        &self,
        input: Batch,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<(Batch, TransformOutput), OperatorError>;

    /// Checks before the pipeline starts that the function can run (a plugin
    /// instantiates and accepts its configuration). Default: nothing to check.
    fn check(&self) -> Result<(), OperatorError> {
        Ok(())
    }

    /// The slot of the Wasm plugin it calls, if any. Default: none.
    fn plugin_slot(&self) -> Option<std::sync::Arc<super::BindingSlot>> {
        None
    }
}

/// A transform stage.
#[derive(Debug)]
pub struct TransformOperator {
    kind: TransformKind,
    function: Box<dyn TransformFn>,
}

impl TransformOperator {
    /// A `kind` transform running `function`.
    pub fn new(kind: TransformKind, function: Box<dyn TransformFn>) -> Self {
        Self { kind, function }
    }

    fn call_once(&self, input: Batch, ctx: &mut PartitionContext<'_>) -> Result<Batch, OperatorError> {
        let input_len = input.len();
        let (input, output) = self.function.call(input, ctx).map_err(|error| match error {
            OperatorError::Plugin {
                error: PluginError::Record { index, .. },
                ..
            } if index as usize >= input_len => malformed(&format!(
                "the plugin named record {index} of a call with {input_len} records"
            )),
            other => other,
        })?;
        let output = match output {
            TransformOutput::Records(output) => output,
            TransformOutput::Keep(indices) => {
                if indices.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(malformed(
                        "a filter returned indices that are not strictly ascending",
                    ));
                }
                input.select(&indices).map_err(|e| OperatorError::Plugin {
                    error: e.into(),
                    record: None,
                })?
            }
        };
        let expected = match self.kind {
            TransformKind::Map => (output.len() != input_len).then_some("exactly one"),
            TransformKind::Filter | TransformKind::FilterMap => {
                (output.len() > input_len).then_some("at most one")
            }
            TransformKind::FlatMap | TransformKind::MapPartitions => None,
        };
        if let Some(expected) = expected {
            return Err(malformed(&format!(
                "a {} must return {expected} record per input record, but returned {} for {input_len}",
                self.kind.name(),
                output.len()
            )));
        }
        Ok(output)
    }
}

fn malformed(message: &str) -> OperatorError {
    OperatorError::Plugin {
        error: PluginError::Batch(message.to_owned()),
        record: None,
    }
}

impl TransformOperator {
    /// Runs one chunk, slicing it when it is large, appending the outputs to `out`.
    fn process_chunk(
        &self,
        input: Batch,
        ctx: &mut PartitionContext<'_>,
        out: &mut Partition,
    ) -> Result<(), OperatorError> {
        if self.kind == TransformKind::MapPartitions || input.data_bytes() <= MAX_CALL_BYTES {
            out.push(self.call_once(input, ctx)?);
            return Ok(());
        }
        // Slice by bytes, keeping record boundaries.
        let mut start = 0;
        while start < input.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < input.len() && (end == start || bytes < MAX_CALL_BYTES) {
                let record = input.get(end);
                bytes += record.value.len() + record.key.map_or(0, <[u8]>::len);
                end += 1;
            }
            let slice = input.slice(start, end);
            out.push(self.call_once(slice, ctx).map_err(|e| e.shifted(start))?);
            start = end;
        }
        Ok(())
    }
}

impl Operator for TransformOperator {
    fn check(&self) -> Result<(), OperatorError> {
        self.function.check()
    }

    fn plugin_slots(&self) -> Vec<std::sync::Arc<super::BindingSlot>> {
        self.function.plugin_slot().into_iter().collect()
    }

    fn planning(&self) -> Planning {
        // Map-partitions sees its whole partition at once (a per-partition
        // top-k, say); the per-record kinds see one record at a time.
        if self.kind == TransformKind::MapPartitions {
            Planning::default()
        } else {
            Planning::piecewise()
        }
    }

    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        if self.kind == TransformKind::MapPartitions {
            let whole = if input.len() == 1 {
                input.into_iter().next().expect("one chunk")
            } else {
                Batch::concat(&input)
            };
            return Ok(vec![self.call_once(whole, ctx)?]);
        }
        // Record indices in errors count from the start of the partition.
        let mut out = Vec::with_capacity(input.len());
        let mut offset = 0;
        for chunk in input {
            let len = chunk.len();
            self.process_chunk(chunk, ctx, &mut out)
                .map_err(|e| e.shifted(offset))?;
            offset += len;
        }
        Ok(out)
    }
}

/// A transform implemented by a Wasm plugin.
#[derive(Debug)]
pub struct WasmTransform {
    plugin: super::PluginUse<TransformWorld>,
}

impl WasmTransform {
    /// Calls the plugin of `plugin` (its configuration and sandbox included).
    pub fn new(plugin: super::PluginUse<TransformWorld>) -> Self {
        Self { plugin }
    }
}

impl TransformFn for WasmTransform {
    fn check(&self) -> Result<(), OperatorError> {
        self.plugin
            .check()
            .map_err(|error| OperatorError::Plugin { error, record: None })
    }

    fn plugin_slot(&self) -> Option<std::sync::Arc<super::BindingSlot>> {
        Some(self.plugin.slot().clone())
    }

    fn call(
        &self,
        input: Batch,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<(Batch, TransformOutput), OperatorError> {
        self.plugin
            .keep_sample(ctx.batch_id, || super::binding::Sample::of_records(&input));
        // Keep what is needed to describe a failing record: the call consumes the input.
        let mut failed_input = None;
        let result = self.plugin.call(ctx.instances, |instance| {
            let (input, result) = instance.transform(input);
            match result {
                Ok(output) => Ok((input, output)),
                Err(error) => {
                    failed_input = Some(input);
                    Err(error)
                }
            }
        });
        result.map_err(|error| {
            let record = match (&error, &failed_input) {
                (PluginError::Record { index, .. }, Some(batch)) if (*index as usize) < batch.len() => {
                    Some(batch.get(*index as usize).describe())
                }
                _ => None,
            };
            OperatorError::Plugin { error, record }
        })
    }
}
