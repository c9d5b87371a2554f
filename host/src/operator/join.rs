//! Operators over two keyed input streams: joins, `cogroup`, and
//! `transform-with` (a plugin that sees both sides of a partition at once).
//!
//! The executor hash-partitions both inputs by key and hands each partition
//! over as the left input's chunks followed by the right input's
//! ([`PartitionContext::left_chunks`] says where the right side starts), so
//! equal keys of both sides meet in the same call. A record is named by its
//! index in the left side, or by the left side's length plus its index in
//! the right side, which is also how failure policies see the partition.
//!
//! Joined values are JSON: `{"left": L, "right": R}` (cogroup: lists of
//! them), where a value that is a JSON object or array is embedded as is and
//! any other value is a JSON string (`null` for the missing side of an outer
//! join). Records without a key match nothing (like SQL's NULL). A joined
//! record carries the later timestamp of its two sides.

use serde_json::Value;

use super::keyed::FastMap;
use super::{Operator, OperatorError, PartitionContext, Planning, PluginUse};
use crate::config::JoinKind;
use crate::record::{Batch, Partition, RecordRef};
use crate::runtime::CoTransformWorld;

/// A join or cogroup of two keyed streams.
#[derive(Debug)]
pub struct Join {
    kind: JoinKind,
    partitions: usize,
}

impl Join {
    /// A join of `kind` into `partitions` partitions.
    pub fn new(kind: JoinKind, partitions: usize) -> Self {
        Self { kind, partitions }
    }
}

/// A value in a joined record: embedded JSON for objects and arrays, else a string.
fn side(value: Option<&[u8]>) -> Value {
    let Some(bytes) = value else {
        return Value::Null;
    };
    if matches!(bytes.first(), Some(b'{' | b'['))
        && let Ok(json) = serde_json::from_slice::<Value>(bytes)
    {
        return json;
    }
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

fn joined(left: Option<RecordRef<'_>>, right: Option<RecordRef<'_>>, out: &mut Batch) {
    let key = left.or(right).and_then(|r| r.key);
    let timestamp = left
        .map(|r| r.timestamp)
        .into_iter()
        .chain(right.map(|r| r.timestamp))
        .max()
        .unwrap_or(0);
    let value = serde_json::json!({
        "left": side(left.map(|r| r.value)),
        "right": side(right.map(|r| r.value)),
    });
    out.push(key, value.to_string().as_bytes(), timestamp);
}

/// Splits a partition into its left and right sides.
pub(crate) fn sides(input: &Partition, left_chunks: usize) -> (Batch, Batch) {
    let split = left_chunks.min(input.len());
    (Batch::concat(&input[..split]), Batch::concat(&input[split..]))
}

impl Operator for Join {
    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let (left, right) = sides(&input, ctx.left_chunks);
        let mut right_by_key: FastMap<&[u8], Vec<usize>> = FastMap::default();
        for (index, record) in right.iter().enumerate() {
            if let Some(key) = record.key {
                right_by_key.entry(key).or_default().push(index);
            }
        }
        let mut out = Batch::with_capacity(left.len().max(right.len()), 0);
        if self.kind == JoinKind::Cogroup {
            self.cogroup(&left, &right, &right_by_key, &mut out);
            return Ok(vec![out]);
        }
        let keep_left = matches!(self.kind, JoinKind::LeftOuter | JoinKind::FullOuter);
        let keep_right = matches!(self.kind, JoinKind::RightOuter | JoinKind::FullOuter);
        let mut right_matched = vec![false; right.len()];
        for record in &left {
            match record.key.and_then(|key| right_by_key.get(key)) {
                Some(matches) => {
                    for &index in matches {
                        right_matched[index] = true;
                        joined(Some(record), Some(right.get(index)), &mut out);
                    }
                }
                None if keep_left => joined(Some(record), None, &mut out),
                None => {}
            }
        }
        if keep_right {
            for (index, record) in right.iter().enumerate() {
                if !right_matched[index] {
                    joined(None, Some(record), &mut out);
                }
            }
        }
        Ok(vec![out])
    }

    fn planning(&self) -> Planning {
        Planning::paired(self.partitions)
    }
}

impl Join {
    /// Per key of either side (left's keys first, in order of appearance):
    /// `{"left": [...], "right": [...]}`.
    fn cogroup(
        &self,
        left: &Batch,
        right: &Batch,
        right_by_key: &FastMap<&[u8], Vec<usize>>,
        out: &mut Batch,
    ) {
        let mut left_by_key: FastMap<&[u8], Vec<usize>> = FastMap::default();
        let mut order: Vec<&[u8]> = Vec::new();
        for (index, record) in left.iter().enumerate() {
            if let Some(key) = record.key {
                let entry = left_by_key.entry(key).or_default();
                if entry.is_empty() {
                    order.push(key);
                }
                entry.push(index);
            }
        }
        // Then the right-only keys, each at its first appearance.
        for (index, record) in right.iter().enumerate() {
            if let Some(key) = record.key
                && !left_by_key.contains_key(key)
                && right_by_key.get(key).and_then(|m| m.first()) == Some(&index)
            {
                order.push(key);
            }
        }
        let none = Vec::new();
        for key in order {
            let lefts = left_by_key.get(key).unwrap_or(&none);
            let rights = right_by_key.get(key).unwrap_or(&none);
            let timestamp = lefts
                .iter()
                .map(|&i| left.get(i).timestamp)
                .chain(rights.iter().map(|&i| right.get(i).timestamp))
                .max()
                .unwrap_or(0);
            let value = serde_json::json!({
                "left": lefts.iter().map(|&i| side(Some(left.get(i).value))).collect::<Vec<_>>(),
                "right": rights.iter().map(|&i| side(Some(right.get(i).value))).collect::<Vec<_>>(),
            });
            out.push(Some(key), value.to_string().as_bytes(), timestamp);
        }
    }
}

/// A plugin over one partition of both inputs (`transform-with`).
#[derive(Debug)]
pub struct TransformWith {
    plugin: PluginUse<CoTransformWorld>,
    partitions: usize,
}

impl TransformWith {
    /// Calls `plugin` on each partition of both inputs, into `partitions` partitions.
    pub fn new(plugin: PluginUse<CoTransformWorld>, partitions: usize) -> Self {
        Self { plugin, partitions }
    }
}

impl Operator for TransformWith {
    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let (left, right) = sides(&input, ctx.left_chunks);
        if left.is_empty() && right.is_empty() {
            return Ok(Vec::new());
        }
        self.plugin
            .keep_sample(ctx.batch_id, || super::binding::Sample::of_pair(&left, &right));
        let mut handed_back = None;
        let result = self.plugin.call(ctx.instances, |instance| {
            let (left, right, output) = instance.process_pair(left, right);
            handed_back = Some((left, right));
            output
        });
        let (left, right) = handed_back.unwrap_or_default();
        let output = result.map_err(|error| {
            let record = match &error {
                crate::runtime::PluginError::Record { index, .. } => {
                    let index = *index as usize;
                    if index < left.len() {
                        Some(left.get(index).describe())
                    } else if index - left.len() < right.len() {
                        Some(right.get(index - left.len()).describe())
                    } else {
                        None
                    }
                }
                _ => None,
            };
            OperatorError::Plugin { error, record }
        })?;
        Ok(vec![output])
    }

    fn planning(&self) -> Planning {
        Planning::paired(self.partitions)
    }

    fn check(&self) -> Result<(), OperatorError> {
        self.plugin
            .check()
            .map_err(|error| OperatorError::Plugin { error, record: None })
    }

    fn plugin_slots(&self) -> Vec<std::sync::Arc<super::BindingSlot>> {
        vec![self.plugin.slot().clone()]
    }
}
