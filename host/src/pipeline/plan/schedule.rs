//! The schedule of a plan: how the executor runs each stage's operators,
//! worked out once when the plan is built.
//!
//! Consecutive fusable operators ([`Planning::fusable`]: per-record
//! transforms, the combine of a reduce-by-key, under a policy that keeps
//! one call per failure) form a fused [`Segment`]: one task per partition
//! takes each chunk through all of them before the next, so a chunk's
//! intermediate output is consumed while it is still in cache and no barrier
//! waits for the slowest partition in between. A fused segment that ends its
//! stage goes on into the next stage's leading fusable operators when that
//! stage reads only this stage's output and nothing else reads it. Every
//! other operator is a segment of its own, run over all partitions after the
//! data movement it asks for.

use std::ops::Range;

use super::StagePlan;
use crate::operator::Planning;

/// A step of a stage's work in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Operator `.0` of the stage, on its own over every partition, after
    /// the data movement its [`Planning::input`] asks for.
    Alone(usize),
    /// Operators `operators` of the stage, then the first `onward`
    /// operators of the next stage, chunk by chunk in one task per
    /// partition. With `onward > 0` the stage's output never becomes a
    /// stream: it is the next stage's input, part-way through.
    Fused {
        /// The stage's operators (at least one).
        operators: Range<usize>,
        /// Leading operators of the next stage that go on with them.
        onward: usize,
    },
}

/// How one stage runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageSchedule {
    /// Leading operators already run by the previous stage's last segment
    /// (it went on into this stage): the stage then takes that segment's
    /// output as its input, part-way through, instead of reading streams.
    pub carried_in: usize,
    /// True when the stage's first operator pairs two inputs
    /// ([`Planning::pairs_inputs`]) and the stage has two.
    pub paired: bool,
    /// The stage's remaining operators, in order.
    pub segments: Vec<Segment>,
}

impl StageSchedule {
    /// True when the stage's last segment goes on into the next stage.
    pub fn carries_on(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::Fused { onward, .. }) if *onward > 0)
    }
}

/// The schedule of every stage of `stages` (in execution order), given the
/// number of readers of each stream.
pub(super) fn schedule(stages: &[StagePlan], readers: &[usize]) -> Vec<StageSchedule> {
    let plannings: Vec<Vec<Planning>> = stages
        .iter()
        .map(|stage| {
            stage
                .operators
                .iter()
                .map(|operator| operator.planning())
                .collect()
        })
        .collect();
    let mut schedules: Vec<StageSchedule> = Vec::with_capacity(stages.len());
    let mut carried_in = 0;
    for (index, stage) in stages.iter().enumerate() {
        let planning = &plannings[index];
        let incoming = std::mem::take(&mut carried_in);
        let paired = incoming == 0
            && stage.inputs.len() == 2
            && planning.first().is_some_and(|first| first.pairs_inputs);
        let mut segments = Vec::new();
        let mut next = incoming;
        while next < planning.len() {
            let run = fusable_run(&planning[next..]);
            if run == 0 {
                segments.push(Segment::Alone(next));
                next += 1;
                continue;
            }
            let end = next + run;
            let onward = match stages.get(index + 1) {
                Some(following)
                    if end == planning.len()
                        && following.inputs == [stage.output]
                        && readers[stage.output] == 1 =>
                {
                    fusable_run(&plannings[index + 1])
                }
                _ => 0,
            };
            if run == 1 && onward == 0 {
                // Nothing to fuse with: one call per partition, as any other.
                segments.push(Segment::Alone(next));
            } else {
                segments.push(Segment::Fused {
                    operators: next..end,
                    onward,
                });
                carried_in = onward;
            }
            next = end;
        }
        schedules.push(StageSchedule {
            carried_in: incoming,
            paired,
            segments,
        });
    }
    schedules
}

/// How many operators from the start of `planning` form a fused run.
fn fusable_run(planning: &[Planning]) -> usize {
    planning.iter().take_while(|planning| planning.fusable()).count()
}
