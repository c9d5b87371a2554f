//! How a cluster pipeline splits into **segments** and each segment into
//! **tasks**, one per partition, each an ordinary pipeline.
//!
//! Segment 0 (`input`) reads the pipeline's Kafka topic. Every stage that
//! groups records by key (reduce-by-key, windows, keyed state, joins,
//! transform-with) starts a segment of its own, named after it: the stages
//! before it write its input to a **repartition topic**
//! (`weir.<pipeline>.<stage>.<input>`) keyed by the record's key, with
//! Kafka's murmur2 partitioner, exactly once; its segment reads that topic.
//! So all records of a key meet in one partition of the topic, and that
//! partition's task holds the key's state. A reduce-by-key also combines
//! each batch before the topic (its reducer before, the same reducer after;
//! a count becomes a sum after), so a word count sends a key once per batch
//! and partition, not once per record.
//!
//! Task `p` of a segment reads partition `p` of the segment's topics (both
//! inputs of a join are partitioned alike), runs the segment's stages, and
//! writes to the segment's sinks; it checkpoints to
//! `<checkpoint-dir>/<segment>/partitions/<p>`, which any process can
//! restore it from. A files sink writes to `<path>/<segment>-<p>`, and a
//! Kafka sink with its own `transactional-id` gets `.<segment>.<p>` after
//! it, so tasks never overwrite or fence each other.
//!
//! **Under the deterministic clock** (`clock = "deterministic"`), the input
//! segment's tasks cut their batches as in one process: batch `k` of a
//! task holds the next `records-per-batch` records of its partition and
//! its records are stamped with the time of batch `k`, so every record's
//! timestamp is a function of its partition and offset alone, whichever
//! process read it. The repartition topics carry those timestamps; the
//! later segments cut batches on the wall clock (what reaches a
//! repartition partition, and when, depends on every input task), so their
//! stages must not depend on batch times: event-time windows are
//! deterministic there, processing-time windows, state timeouts and joins
//! (which pair records of the same batch) are refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::checkpoint::CheckpointSettings;
use crate::config::{
    BuiltinReducer, ClockMode, ClusterSpec, DEAD_LETTERS, OperatorSpec, PipelineSpec, ReducerSpec, SinkKind,
    SinkSpec, SourceKind, SourceSpec, StageSpec, WindowTime,
};
use crate::sink::files::FilesSinkSpec;
use crate::sink::kafka::{KafkaDelivery, KafkaFormat, KafkaSinkSpec, ProcessTransactions};
use crate::source::kafka::{KafkaSpec, StartAt, valid_topic};

use super::ClusterError;

/// The name of the segment that reads the pipeline's own topic.
pub const INPUT_SEGMENT: &str = "input";

/// A pipeline cut into segments at its keyed stages.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// The pipeline as written.
    pipeline: PipelineSpec,
    /// `[cluster]`.
    cluster: ClusterSpec,
    /// The pipeline's Kafka source.
    source: SourceSpec,
    /// Its settings.
    kafka: KafkaSpec,
    /// The segments, `input` first, each after the segments it reads.
    segments: Vec<Segment>,
    /// The process's shared transactional producers, which the tasks'
    /// exactly-once Kafka sinks write through (none: each its own).
    transactions: Option<Arc<ProcessTransactions>>,
}

/// Stages that run together on the same partition of the same topics.
#[derive(Debug, Clone)]
pub struct Segment {
    /// `input`, or the keyed stage that starts it.
    pub name: String,
    /// The topics it reads: `(stream, topic)`; the first leads (the
    /// consumer group assigns its partitions, and task `p` reads partition
    /// `p` of every topic).
    pub reads: Vec<(String, String)>,
    /// Its stages, in pipeline order.
    stages: Vec<StageSpec>,
    /// The streams it writes to repartition topics: `(stream, topic,
    /// combine)`, where `combine` reduces each batch before the topic.
    writes: Vec<(String, String, Option<ReducerSpec>)>,
}

impl Segment {
    /// The topic whose partitions the group assigns.
    pub fn lead_topic(&self) -> &str {
        &self.reads[0].1
    }
}

/// A stage that needs every record of a key in one place.
fn groups_by_key(op: &OperatorSpec) -> bool {
    matches!(
        op,
        OperatorSpec::ReduceByKey { .. }
            | OperatorSpec::Window(_)
            | OperatorSpec::KeyedState(_)
            | OperatorSpec::Join { .. }
            | OperatorSpec::TransformWith { .. }
    )
}

/// Why a keyed stage's output depends on how batches are cut, if it does.
fn batch_time_dependent(op: &OperatorSpec) -> Option<&'static str> {
    match op {
        OperatorSpec::Window(window) if window.time == WindowTime::Processing => {
            Some("a processing-time window is a run of batches")
        }
        OperatorSpec::KeyedState(state) if state.timeout.is_some() => {
            Some("a state timeout counts batch times")
        }
        OperatorSpec::Join { .. } => Some("a join pairs the records of one batch"),
        _ => None,
    }
}

impl ClusterPlan {
    /// Cuts `pipeline` (which has a `[cluster]` table) into segments.
    pub fn new(pipeline: &PipelineSpec) -> Result<Self, ClusterError> {
        let invalid = |message: String| ClusterError::Plan {
            pipeline: pipeline.name.clone(),
            message,
        };
        let cluster = pipeline
            .cluster
            .clone()
            .ok_or_else(|| invalid("the pipeline has no [cluster] table".into()))?;
        let source = pipeline
            .sources
            .first()
            .cloned()
            .ok_or_else(|| invalid("a cluster pipeline reads one Kafka source".into()))?;
        let kafka = source
            .kind
            .settings::<KafkaSpec>()
            .cloned()
            .ok_or_else(|| invalid(format!("source `{}` is not a Kafka source", source.name)))?;
        let mut segments = vec![Segment {
            name: INPUT_SEGMENT.to_owned(),
            reads: vec![(source.name.clone(), kafka.topics[0].clone())],
            stages: Vec::new(),
            writes: Vec::new(),
        }];
        // The segment each stream is produced in.
        let mut segment_of: BTreeMap<String, usize> = BTreeMap::from([(source.name.clone(), 0)]);
        for stage in &pipeline.stages {
            if stage.inputs.iter().any(|input| input == DEAD_LETTERS) {
                return Err(invalid(format!(
                    "stage `{}` reads `{DEAD_LETTERS}`: in a cluster, dead letters go to sinks only",
                    stage.name
                )));
            }
            if groups_by_key(&stage.op) {
                if pipeline.clock != ClockMode::WallClock
                    && let Some(why) = batch_time_dependent(&stage.op)
                {
                    return Err(invalid(format!(
                        "stage `{}`: {why}; under clock = \"deterministic\" a cluster cuts the batches \
                         after a repartition topic on the wall clock, so only the records' timestamps are \
                         deterministic there (use an event-time window, `time = \"event\"`)",
                        stage.name
                    )));
                }
                let index = segments.len();
                let mut reads = Vec::new();
                for input in &stage.inputs {
                    let topic = format!("weir.{}.{}.{input}", pipeline.name, stage.name);
                    if !valid_topic(&topic) {
                        return Err(invalid(format!(
                            "stage `{}`: its repartition topic would be `{topic}`, which Kafka refuses \
                             (1-249 letters, digits, `.`, `_` or `-`): rename the pipeline, stage or stream",
                            stage.name
                        )));
                    }
                    let combine = match &stage.op {
                        OperatorSpec::ReduceByKey { reducer, .. } => Some(reducer.clone()),
                        _ => None,
                    };
                    segments[segment_of[input]]
                        .writes
                        .push((input.clone(), topic.clone(), combine));
                    reads.push((input.clone(), topic));
                }
                let mut stage = stage.clone();
                if let OperatorSpec::ReduceByKey { reducer, .. } = &mut stage.op
                    && let ReducerSpec::Builtin(BuiltinReducer::Count) = reducer
                {
                    // Counted before the topic: the counts add up after it.
                    *reducer = ReducerSpec::Builtin(BuiltinReducer::Sum);
                }
                segments.push(Segment {
                    name: stage.name.clone(),
                    reads,
                    stages: vec![stage.clone()],
                    writes: Vec::new(),
                });
                segment_of.insert(stage.name.clone(), index);
                continue;
            }
            let mut from: Vec<usize> = stage.inputs.iter().map(|input| segment_of[input]).collect();
            from.sort_unstable();
            from.dedup();
            let [index] = from[..] else {
                return Err(invalid(format!(
                    "stage `{}` reads streams from both sides of a keyed stage ({}): in a cluster, a \
                     stage's inputs come from the source or from one keyed stage",
                    stage.name,
                    stage.inputs.join(", ")
                )));
            };
            segments[index].stages.push(stage.clone());
            segment_of.insert(stage.name.clone(), index);
        }
        for sink in &pipeline.sinks {
            if sink.input != DEAD_LETTERS && !segment_of.contains_key(&sink.input) {
                return Err(invalid(format!(
                    "sink `{}` reads `{}`, which no stage produces",
                    sink.name, sink.input
                )));
            }
        }
        Ok(Self {
            pipeline: pipeline.clone(),
            cluster,
            source,
            kafka,
            segments,
            transactions: None,
        })
    }

    /// The plan with every task's exactly-once Kafka sinks (repartition
    /// writers included) writing through `transactions`: one transaction
    /// per process per batch.
    pub fn sharing_transactions(self, transactions: Arc<ProcessTransactions>) -> Self {
        Self {
            transactions: Some(transactions),
            ..self
        }
    }

    /// The segments, `input` first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// `[cluster]`.
    pub fn cluster(&self) -> &ClusterSpec {
        &self.cluster
    }

    /// The pipeline's Kafka source settings (brokers, client properties).
    pub fn kafka(&self) -> &KafkaSpec {
        &self.kafka
    }

    /// The repartition topics, in segment order.
    pub fn repartition_topics(&self) -> Vec<&str> {
        self.segments[1..]
            .iter()
            .flat_map(|segment| segment.reads.iter().map(|(_, topic)| topic.as_str()))
            .collect()
    }

    /// The segment whose lead topic is `topic`.
    pub fn segment_led_by(&self, topic: &str) -> Option<usize> {
        self.segments
            .iter()
            .position(|segment| segment.lead_topic() == topic)
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.pipeline.name
    }

    /// The name of task `partition` of segment `segment`.
    pub fn task_name(&self, segment: usize, partition: i32) -> String {
        format!(
            "{}.{}.{partition}",
            self.pipeline.name, self.segments[segment].name
        )
    }

    /// The pipeline task `partition` of segment `segment` runs.
    pub fn task(&self, segment: usize, partition: i32) -> PipelineSpec {
        let seg = &self.segments[segment];
        let place = format!("{}-{partition}", seg.name);
        let mut spec = self.pipeline.clone();
        spec.name = self.task_name(segment, partition);
        spec.cluster = None;
        if segment > 0 {
            // What reaches a repartition partition depends on every input
            // task: its batches are cut on the wall clock (the records keep
            // the timestamps the input tasks gave them).
            spec.clock = ClockMode::WallClock;
        }
        spec.checkpoint = self
            .pipeline
            .checkpoint
            .as_ref()
            .map(|settings| CheckpointSettings {
                location: settings
                    .location
                    .child(&format!("{}/partitions/{partition}", seg.name)),
                ..settings.clone()
            });
        spec.sources = if segment == 0 {
            let kafka = KafkaSpec {
                only_partitions: Some(vec![partition]),
                ..self.kafka.clone()
            };
            vec![SourceSpec {
                kind: SourceKind::new(kafka),
                ..self.source.clone()
            }]
        } else {
            seg.reads
                .iter()
                .map(|(stream, topic)| SourceSpec {
                    name: stream.clone(),
                    kind: SourceKind::new(KafkaSpec {
                        topics: vec![topic.clone()],
                        group_id: None,
                        start: StartAt::Earliest,
                        max_rate_per_partition: None,
                        records_per_batch: None,
                        only_partitions: Some(vec![partition]),
                        ..self.kafka.clone()
                    }),
                    rate: Default::default(),
                    line: self.source.line,
                })
                .collect()
        };
        let mut stages = seg.stages.clone();
        let mut sinks: Vec<SinkSpec> = Vec::new();
        for (stream, topic, combine) in &seg.writes {
            let mut input = stream.clone();
            if let Some(reducer) = combine {
                let combined = format!("{stream}.combined-for.{topic}");
                stages.push(StageSpec {
                    name: combined.clone(),
                    inputs: vec![stream.clone()],
                    op: OperatorSpec::ReduceByKey {
                        reducer: reducer.clone(),
                        partitions: None,
                    },
                    sandbox: self.combine_sandbox(topic),
                    policy: Default::default(),
                    line: 0,
                });
                input = combined;
            }
            sinks.push(SinkSpec {
                name: format!("repartition:{topic}"),
                input,
                kind: SinkKind::new(self.repartition_sink(topic)),
                line: self.source.line,
            });
        }
        let dead_letters = seg.stages.iter().any(StageSpec::dead_letters);
        for sink in &self.pipeline.sinks {
            let here = if sink.input == DEAD_LETTERS {
                dead_letters
            } else {
                seg.reads.iter().any(|(stream, _)| *stream == sink.input)
                    || seg.stages.iter().any(|stage| stage.name == sink.input)
            };
            if here {
                sinks.push(SinkSpec {
                    kind: task_sink(&sink.kind, &place, &seg.name, partition, &self.transactions),
                    ..sink.clone()
                });
            }
        }
        spec.stages = stages;
        spec.sinks = sinks;
        spec
    }

    /// The sandbox of a combine stage: its keyed stage's, when the reducer
    /// is a plugin.
    fn combine_sandbox(&self, topic: &str) -> crate::runtime::Sandbox {
        self.segments
            .iter()
            .find(|segment| segment.reads.iter().any(|(_, t)| t == topic))
            .and_then(|segment| segment.stages.first())
            .map(|stage| stage.sandbox.clone())
            .unwrap_or_default()
    }

    /// The exactly-once writer of a repartition topic.
    fn repartition_sink(&self, topic: &str) -> KafkaSinkSpec {
        let mut client = self.kafka.client.clone();
        client.properties.retain(|(name, _)| name != "partitioner");
        // Java's partitioner: every process sends a key to the same partition.
        client.properties.push(("partitioner".into(), "murmur2".into()));
        client.properties.sort();
        KafkaSinkSpec {
            client,
            topic: topic.to_owned(),
            delivery: KafkaDelivery::ExactlyOnce,
            format: KafkaFormat::Value,
            transactional_id: None,
            ids_prefix: self.kafka.ids_prefix.clone(),
            dead_letter_topic: None,
            timeout: std::time::Duration::from_secs(60),
            shared: self.transactions.clone(),
        }
    }
}

/// A sink of the pipeline as task `partition` of `segment` runs it, in
/// `place` (`<segment>-<partition>`). An exactly-once Kafka sink writes
/// through the process's `transactions` and, unless it names its own
/// `partitioner`, partitions as the repartition writers do (Java's murmur2:
/// the same producer can then carry both).
fn task_sink(
    kind: &SinkKind,
    place: &str,
    segment: &str,
    partition: i32,
    transactions: &Option<Arc<ProcessTransactions>>,
) -> SinkKind {
    if let Some(files) = kind.settings::<FilesSinkSpec>() {
        return SinkKind::new(files.within(place));
    }
    if let Some(kafka) = kind.settings::<KafkaSinkSpec>() {
        let mut task = kafka.clone();
        if let Some(id) = &kafka.transactional_id {
            task.transactional_id = Some(format!("{id}.{segment}.{partition}"));
        }
        if kafka.delivery == KafkaDelivery::ExactlyOnce && transactions.is_some() {
            task.shared = transactions.clone();
            if !task
                .client
                .properties
                .iter()
                .any(|(name, _)| name == "partitioner")
            {
                task.client
                    .properties
                    .push(("partitioner".into(), "murmur2".into()));
                task.client.properties.sort();
            }
        }
        return SinkKind::new(task);
    }
    kind.clone()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::checkpoint::CheckpointLocation;

    /// A count of a Kafka topic's lines into the console, plus `extra`
    /// stages and sinks.
    fn pipeline(extra: &str) -> PipelineSpec {
        let text = format!(
            r#"
[pipeline]
name = "wc"
checkpoint-dir = "/shared/wc"

[[source]]
name = "lines"
type = "kafka"
brokers = "127.0.0.1:9"
topics = "text"

[[stage]]
name = "spread"
input = "lines"
op = "repartition"

[[stage]]
name = "counts"
input = "spread"
op = "reduce-by-key"
reducer = "count"

[[sink]]
input = "counts"
type = "console"
{extra}
[cluster]
group-id = "wc"
"#
        );
        crate::config::parse(&text, Path::new("wc.toml")).expect("a valid pipeline")
    }

    #[test]
    fn a_keyed_stage_starts_a_segment_fed_by_a_repartition_topic() {
        let plan = ClusterPlan::new(&pipeline("")).unwrap();
        let names: Vec<&str> = plan.segments().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["input", "counts"]);
        assert_eq!(plan.repartition_topics(), ["weir.wc.counts.spread"]);
        assert_eq!(plan.segment_led_by("text"), Some(0));
        assert_eq!(plan.segment_led_by("weir.wc.counts.spread"), Some(1));

        // Task 3 of the input: partition 3 of the topic, the stages before
        // the count, a per-batch count, and the writer of the topic.
        let input = plan.task(0, 3);
        assert_eq!(input.name, "wc.input.3");
        let kafka = input.sources[0].kind.settings::<KafkaSpec>().unwrap();
        assert_eq!(kafka.only_partitions, Some(vec![3]));
        let stages: Vec<&str> = input.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(stages, ["spread", "spread.combined-for.weir.wc.counts.spread"]);
        assert_eq!(
            input.sinks.len(),
            1,
            "the console reads the counts, in the other segment"
        );
        let writer = input.sinks[0].kind.settings::<KafkaSinkSpec>().unwrap();
        assert_eq!(writer.topic, "weir.wc.counts.spread");
        assert_eq!(writer.delivery, KafkaDelivery::ExactlyOnce);
        assert!(
            writer
                .client
                .properties
                .contains(&("partitioner".into(), "murmur2".into()))
        );
        assert_eq!(
            input.checkpoint.unwrap().location,
            CheckpointLocation::Directory("/shared/wc/input/partitions/3".into())
        );

        // Task 2 of the count: partition 2 of the repartition topic, from
        // its beginning, adding up the per-batch counts.
        let counts = plan.task(1, 2);
        let reader = counts.sources[0].kind.settings::<KafkaSpec>().unwrap();
        assert_eq!(counts.sources[0].name, "spread");
        assert_eq!(reader.topics, ["weir.wc.counts.spread"]);
        assert_eq!(
            (reader.only_partitions.clone(), reader.start.clone()),
            (Some(vec![2]), StartAt::Earliest)
        );
        assert!(matches!(
            counts.stages[0].op,
            OperatorSpec::ReduceByKey {
                reducer: ReducerSpec::Builtin(BuiltinReducer::Sum),
                ..
            }
        ));
        assert_eq!(counts.sinks.len(), 1);
        assert!(counts.cluster.is_none());
    }

    #[test]
    fn a_stage_reading_both_sides_of_a_keyed_stage_is_refused() {
        let spec = pipeline(
            "\n[[stage]]\nname = \"both\"\ninput = [\"spread\", \"counts\"]\nop = \"union\"\n\n[[sink]]\ninput = \"both\"\ntype = \"console\"\n",
        );
        let error = ClusterPlan::new(&spec).unwrap_err().to_string();
        assert!(
            error.contains("reads streams from both sides of a keyed stage"),
            "{error}"
        );
    }

    #[test]
    fn files_sinks_and_fixed_transactional_ids_are_made_per_task() {
        let spec = pipeline(
            "\n[[sink]]\ninput = \"counts\"\ntype = \"files\"\npath = \"/out\"\n\n[[sink]]\ninput = \"counts\"\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9\"\ntopic = \"out\"\ndelivery = \"exactly-once\"\ntransactional-id = \"wc-out\"\n",
        );
        let task = ClusterPlan::new(&spec).unwrap().task(1, 4);
        let files = task
            .sinks
            .iter()
            .find_map(|s| s.kind.settings::<FilesSinkSpec>())
            .unwrap();
        assert_eq!(
            files.target,
            crate::sink::files::FilesTarget::Local(crate::config::DirPath::unconfined("/out/counts-4"))
        );
        let kafka = task
            .sinks
            .iter()
            .find_map(|s| s.kind.settings::<KafkaSinkSpec>())
            .unwrap();
        assert_eq!(kafka.transactional_id.as_deref(), Some("wc-out.counts.4"));
    }

    #[test]
    fn under_the_deterministic_clock_only_the_input_tasks_cut_deterministic_batches() {
        let deterministic = |window: &str| {
            let text = format!(
                "[pipeline]\nname = \"wc\"\ncheckpoint-dir = \"/shared/wc\"\nclock = \"deterministic\"\n\n\
                 [[source]]\nname = \"lines\"\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9\"\ntopics = \"text\"\n\
                 records-per-batch = 10\n\n[[stage]]\nname = \"per-key\"\ninput = \"lines\"\n\
                 op = \"reduce-by-key-and-window\"\nreducer = \"count\"\nlength = \"30s\"\nslide = \"10s\"\n{window}\n\
                 [[sink]]\ninput = \"per-key\"\ntype = \"console\"\n\n[cluster]\ngroup-id = \"wc\"\n"
            );
            crate::config::parse(&text, Path::new("wc.toml")).expect("a valid pipeline")
        };
        let plan = ClusterPlan::new(&deterministic(
            "time = \"event\"\nallowed-lateness = \"1m\"\noutput-mode = \"update\"\n",
        ))
        .unwrap();
        assert!(matches!(plan.task(0, 1).clock, ClockMode::Deterministic { .. }));
        assert_eq!(plan.task(1, 1).clock, ClockMode::WallClock);

        let error = ClusterPlan::new(&deterministic("")).unwrap_err().to_string();
        assert!(
            error.contains("a processing-time window is a run of batches")
                && error.contains("time = \"event\""),
            "{error}"
        );
    }
}
