//! Native Rust functions in place of plugins.
//!
//! Embedders (and the benchmark, to compare Wasm with native on the same
//! pipeline) can register these under a plugin name; the operators treat them
//! exactly like Wasm plugins, through [`TransformFn`] and [`GroupReduceFn`].

use std::fmt;
use std::sync::Arc;

use super::reduce::{GroupReduceFn, GroupedValues};
use super::transform::TransformFn;
use super::{OperatorError, PartitionContext};
use crate::record::{Batch, RecordRef};
use crate::runtime::TransformOutput;

type BatchFn = dyn Fn(&Batch) -> Result<TransformOutput, OperatorError> + Send + Sync;

/// A transform implemented in Rust.
#[derive(Clone)]
pub struct NativeTransform {
    name: String,
    function: Arc<BatchFn>,
}

impl fmt::Debug for NativeTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeTransform")
            .field("name", &self.name)
            .finish()
    }
}

fn record_error(index: usize, record: RecordRef<'_>, message: String) -> OperatorError {
    OperatorError::Native(format!(
        "record {index} ({}) failed: {message}",
        record.describe()
    ))
}

impl NativeTransform {
    /// A transform over whole batches (map-partitions).
    pub fn batch(
        name: &str,
        function: impl Fn(&Batch) -> Result<Batch, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.to_owned(),
            function: Arc::new(move |input| {
                function(input)
                    .map(TransformOutput::Records)
                    .map_err(OperatorError::Native)
            }),
        }
    }

    /// A flat-map: `function` pushes any number of records per input record.
    pub fn flat_map(
        name: &str,
        function: impl Fn(RecordRef<'_>, &mut Batch) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.to_owned(),
            function: Arc::new(move |input| {
                // The guest SDK's reservation for flat-maps: a record per
                // four input bytes, twice the input's bytes.
                let mut output =
                    Batch::with_capacity(input.len().max(input.data_bytes() / 4), input.data_bytes() * 2);
                for (index, record) in input.iter().enumerate() {
                    function(record, &mut output).map_err(|m| record_error(index, record, m))?;
                }
                Ok(TransformOutput::Records(output))
            }),
        }
    }

    /// A map (or filter-map): `function` pushes one record (or none) per input record.
    pub fn map(
        name: &str,
        function: impl Fn(RecordRef<'_>, &mut Batch) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self::flat_map(name, function)
    }

    /// A filter: keeps the records for which `predicate` is true.
    pub fn filter(
        name: &str,
        predicate: impl Fn(RecordRef<'_>) -> Result<bool, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.to_owned(),
            function: Arc::new(move |input| {
                let mut keep = Vec::with_capacity(input.len());
                for (index, record) in input.iter().enumerate() {
                    if predicate(record).map_err(|m| record_error(index, record, m))? {
                        keep.push(index as u32);
                    }
                }
                Ok(TransformOutput::Keep(keep))
            }),
        }
    }

    /// The name it was registered under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl TransformFn for NativeTransform {
    fn call(
        &self,
        input: Batch,
        _ctx: &mut PartitionContext<'_>,
    ) -> Result<(Batch, TransformOutput), OperatorError> {
        let output = (self.function)(&input)?;
        Ok((input, output))
    }
}

type ValuesFn = dyn Fn(&mut dyn Iterator<Item = &[u8]>) -> Result<Vec<u8>, String> + Send + Sync;

/// A reducer implemented in Rust: combines one key's values into one.
#[derive(Clone)]
pub struct NativeReducer {
    name: String,
    function: Arc<ValuesFn>,
}

impl fmt::Debug for NativeReducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeReducer").field("name", &self.name).finish()
    }
}

impl NativeReducer {
    /// A reducer that folds the values of each key with `function`.
    pub fn new(
        name: &str,
        function: impl Fn(&mut dyn Iterator<Item = &[u8]>) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.to_owned(),
            function: Arc::new(function),
        }
    }
}

impl GroupReduceFn for NativeReducer {
    fn reduce(
        &self,
        groups: GroupedValues,
        _ctx: &mut PartitionContext<'_>,
    ) -> Result<(Vec<u8>, Vec<u32>), OperatorError> {
        let value = |i: usize| {
            let start = if i == 0 { 0 } else { groups.ends[i - 1] as usize };
            &groups.data[start..groups.ends[i] as usize]
        };
        let mut data = Vec::new();
        let mut ends = Vec::with_capacity(groups.group_ends.len());
        let mut start = 0usize;
        for &end in &groups.group_ends {
            let mut values = (start..end as usize).map(value);
            let combined = (self.function)(&mut values).map_err(OperatorError::Native)?;
            data.extend_from_slice(&combined);
            ends.push(data.len() as u32);
            start = end as usize;
        }
        Ok((data, ends))
    }
}

pub mod library;
