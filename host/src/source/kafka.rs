//! Records from Kafka topics, Spark's direct stream: the receiver reads every
//! partition of its topics itself (no consumer-group assignment), and every
//! chunk carries the next offset of every partition. When a batch is cut,
//! its offset range per partition is therefore known and written to the
//! batch log before the batch runs ([`BatchInput::Kafka`]); after a crash
//! the receiver reads exactly those ranges again, so the source needs no
//! write-ahead log. A cluster task ([`crate::cluster`]) reads one partition
//! of its topic this way ([`KafkaSpec::only_partitions`]): the consumer
//! group decides which process runs the task, not which records it reads.
//!
//! - **Records** keep the Kafka key, the value (an empty value for a
//!   tombstone) and the message timestamp (the wall clock when the message
//!   has none; the batch time under deterministic time).
//! - **Where to start**, per partition: the checkpoint's position when there
//!   is one (partitions new since then start at their beginning); else the
//!   offset in `start` when it names the partition; else the offset the
//!   consumer group (`group-id`) committed; else `start` (`earliest` or
//!   `latest`, the default).
//! - **Committed offsets**: after each batch's sinks have committed, its end
//!   offsets are committed to the group (`group-id`, by default
//!   `weir.<pipeline>.<source>`), for lag monitoring and for a start without
//!   a checkpoint; never used to recover when a checkpoint exists. A source
//!   held back by a full queue commits them while it waits (not while it
//!   replays the batch log), and a stopped source, even by
//!   [`StopMode::Now`](crate::pipeline::StopMode::Now), leaves the group at
//!   the end of the last batch that committed. The source commits each
//!   position once, so a stop after a failed batch does not commit again a
//!   position that an exactly-once Kafka sink may since have moved past in
//!   its transaction. A source that failed commits nothing more (with the
//!   brokers out of reach a commit would hold its error back for the
//!   session timeout).
//! - **New partitions** of a topic are found every `discovery-interval`
//!   (10 s) and read from their beginning.
//! - **Failures**: an unreachable broker, an unknown or deleted topic are
//!   logged and retried with backoff (librdkafka reconnects by itself); when
//!   the source has not reached its topics for `give-up-after` (5 minutes)
//!   it fails, and the pipeline with it: what was logged is in the batch log
//!   and what was not is still in Kafka, so nothing acknowledged is lost. An
//!   offset the broker no longer has (deleted by retention) fails the
//!   source at once: records would be lost.
//! - **`--available-now`** reads each partition up to the end it had when
//!   the source found it, even while producers keep writing.
//! - **Rate**: `max-rate-per-partition` (records per second) caps each
//!   partition's reading.
//! - **Deterministic time**: with `records-per-batch = n`, batch `k` holds
//!   the next `n` records of every partition, partitions in order (fewer at
//!   the end of `--available-now`); the receiver waits for every partition
//!   to have them.
//!
//! The receiver runs librdkafka's consumer on a blocking thread, one
//! partition queue per partition (so that an end of partition is known
//! per partition, and deterministic batches read partitions in order),
//! each read up to 1,024 messages a call (`kafka_queue`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::runtime::Handle;

use super::kafka_queue::BatchedQueue;
use super::{BatchInput, Closed, Delivery, Source, SourceContext, SourceError, SourcePosition};
use crate::config::{Key, KindContext, Settings, SourceConfig, SourceType, SpecError, duration, positive};
use crate::kafka::{ClientSettings, LogContext, describe};
use crate::record::Batch;
use crate::source::position::{OffsetRange, PartitionOffset};

/// How long an ending source waits for its last batches to commit, to
/// commit their offsets to the group.
const LAST_COMMIT_WAIT: Duration = Duration::from_secs(10);

/// How often the source reports its partitions' lag (the client's
/// `statistics.interval.ms`, unless the pipeline sets it).
const LAG_REPORT: Duration = Duration::from_secs(5);

/// Client properties the Kafka source sets itself, and why.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use the `brokers` key"),
    ("metadata.broker.list", "use the `brokers` key"),
    ("group.id", "use the `group-id` key"),
    (
        "enable.auto.commit",
        "Weir commits offsets itself, after each batch's sinks committed",
    ),
    (
        "enable.auto.offset.store",
        "Weir commits offsets itself, after each batch's sinks committed",
    ),
    ("auto.offset.reset", "use the `start` key"),
    (
        "enable.partition.eof",
        "Weir needs the end-of-partition events to know what is available now",
    ),
];

/// Where partitions without a checkpointed or committed offset start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest record the broker still has.
    Earliest,
    /// After the newest record (only records produced from now on).
    #[default]
    Latest,
    /// Offsets per `(topic, partition)`; other partitions start at `latest`.
    Offsets(BTreeMap<(String, i32), i64>),
}

/// Settings of the Kafka source (`type = "kafka"`).
#[derive(Debug, Clone)]
pub struct KafkaSpec {
    /// Brokers and client properties.
    pub client: ClientSettings,
    /// The topics read, every partition of each.
    pub topics: Vec<String>,
    /// The consumer group offsets are committed to (`None`: derived from
    /// the pipeline and source names, see [`KafkaSpec::group`]).
    pub group_id: Option<String>,
    /// What the group starts with (a tenant's prefix; see
    /// [`crate::config::Scope::ids_prefix`]).
    pub ids_prefix: Option<String>,
    /// Where partitions without a known offset start.
    pub start: StartAt,
    /// Records per second at most, per partition.
    pub max_rate_per_partition: Option<u64>,
    /// Under deterministic time: records per partition in each batch.
    pub records_per_batch: Option<u64>,
    /// How often to look for new partitions (and check the topics exist).
    pub discovery_interval: Duration,
    /// How long the topics may stay unreachable before the source fails.
    pub give_up_after: Duration,
    /// Only these partitions of each topic (a cluster task's); `None`:
    /// every partition. Not a key of the file: the cluster sets it.
    pub only_partitions: Option<Vec<i32>>,
}

impl SourceType for KafkaSpec {
    const NAME: &'static str = "kafka";
    const KEYS: &'static [Key] = &[
        Key::text("brokers"),
        Key::any("topics"),
        Key::text("group-id"),
        Key::any("start"),
        Key::integer("max-rate-per-partition"),
        Key::integer("records-per-batch"),
        Key::text("discovery-interval"),
        Key::text("give-up-after"),
        Key::any("properties"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let client = ClientSettings::parse(
            settings.text("brokers"),
            settings.any("properties"),
            OWNED_PROPERTIES,
            cx.offset,
            "a `kafka` source",
            cx.paths.confined(),
        )?;
        let topics = topics(settings.any("topics"), cx.offset)?;
        let group_id = match settings.text("group-id") {
            Some(group) if group.get_ref().trim().is_empty() => {
                return Err((group.span().start, "`group-id` is empty".to_owned()));
            }
            Some(group) => Some(group.get_ref().clone()),
            None => None,
        };
        let start = match settings.any("start") {
            None => StartAt::Latest,
            Some(value) => start_at(value)?,
        };
        let optional_duration = |key: &str, default: Duration| match settings.text(key) {
            Some(text) => duration(text),
            None => Ok(default),
        };
        Ok(Self {
            client,
            topics,
            group_id,
            ids_prefix: cx.ids_prefix.map(str::to_owned),
            start,
            max_rate_per_partition: positive(
                settings.integer("max-rate-per-partition"),
                "max-rate-per-partition",
                1 << 40,
            )?
            .map(|n| n as u64),
            records_per_batch: positive(
                settings.integer("records-per-batch"),
                "records-per-batch",
                1 << 30,
            )?
            .map(|n| n as u64),
            discovery_interval: optional_duration("discovery-interval", Duration::from_secs(10))?,
            give_up_after: optional_duration("give-up-after", Duration::from_secs(300))?,
            only_partitions: None,
        })
    }
}

/// `topics = "a"` or `topics = ["a", "b"]`.
fn topics(value: Option<&toml::Spanned<toml::Value>>, offset: usize) -> Result<Vec<String>, SpecError> {
    let Some(value) = value else {
        return Err((
            offset,
            "a `kafka` source needs `topics` (a topic or a list of topics)".to_owned(),
        ));
    };
    let at = value.span().start;
    let names = crate::config::one_or_many(value, "`topics` must be a topic name or a list of topic names")?;
    if names.is_empty() {
        return Err((at, "`topics` is empty".to_owned()));
    }
    if let Some(bad) = names.iter().find(|name| !valid_topic(name)) {
        return Err((
            at,
            format!("invalid topic name {bad:?} (1-249 letters, digits, `.`, `_` or `-`)"),
        ));
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    Ok(unique)
}

/// Kafka's rule for topic names.
pub(crate) fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `start = "earliest" | "latest" | { "topic/partition" = offset, ... }`.
fn start_at(value: &toml::Spanned<toml::Value>) -> Result<StartAt, SpecError> {
    let at = value.span().start;
    let expected =
        "`start` must be \"earliest\", \"latest\" or a table of offsets such as { \"events/0\" = 42 }";
    match value.get_ref() {
        toml::Value::String(text) => match text.as_str() {
            "earliest" => Ok(StartAt::Earliest),
            "latest" => Ok(StartAt::Latest),
            _ => Err((at, expected.to_owned())),
        },
        toml::Value::Table(table) => {
            let mut offsets = BTreeMap::new();
            for (name, offset) in table {
                let parsed = name
                    .rsplit_once('/')
                    .and_then(|(topic, partition)| Some((topic.to_owned(), partition.parse::<i32>().ok()?)));
                let (Some((topic, partition)), Some(offset)) = (parsed, offset.as_integer()) else {
                    return Err((at, expected.to_owned()));
                };
                if partition < 0 || offset < 0 {
                    return Err((at, format!("`start`: {name:?} = {offset} is negative")));
                }
                offsets.insert((topic, partition), offset);
            }
            Ok(StartAt::Offsets(offsets))
        }
        _ => Err((at, expected.to_owned())),
    }
}

impl KafkaSpec {
    /// The consumer group: `group-id`, or `weir.<pipeline>.<source>`,
    /// after the scope's prefix (a tenant's).
    pub fn group(&self, pipeline: &str, source: &str) -> String {
        super::group_id(
            self.group_id.as_deref(),
            self.ids_prefix.as_deref(),
            pipeline,
            source,
        )
    }
}

impl SourceConfig for KafkaSpec {
    fn build(&self) -> Box<dyn Source> {
        Box::new(KafkaSource { spec: self.clone() })
    }

    fn reach(&self) -> crate::config::Reach {
        self.client.reach()
    }

    fn fixed_batches(&self) -> bool {
        self.records_per_batch.is_some()
    }
}

/// A Kafka receiver.
pub struct KafkaSource {
    spec: KafkaSpec,
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let handle = Handle::current();
        let name = ctx.name.clone();
        let spec = self.spec;
        match tokio::task::spawn_blocking(move || Receiver::open(spec, ctx, handle)?.run()).await {
            Ok(outcome) => outcome,
            Err(join) => Err(SourceError {
                source_name: name,
                message: format!("the Kafka receiver stopped unexpectedly: {join}"),
            }),
        }
    }
}

/// A topic partition.
type TopicPartition = (String, i32);

/// Why the receiver stopped early.
enum Halt {
    /// The pipeline is gone or stopping.
    Stopped,
    /// The source failed.
    Failed(SourceError),
}

impl From<Closed> for Halt {
    fn from(_: Closed) -> Self {
        Self::Stopped
    }
}

impl From<SourceError> for Halt {
    fn from(error: SourceError) -> Self {
        Self::Failed(error)
    }
}

/// The consumer's context: librdkafka's log lines to Weir's log, and each
/// partition's end from the client's statistics (for the lag).
struct ReaderContext {
    log: LogContext,
    /// Per partition: its end as the last statistics gave it.
    ends: std::sync::Mutex<BTreeMap<TopicPartition, i64>>,
    /// Whether the end is the last stable offset (`read_committed`, the
    /// default) or the high watermark.
    read_committed: bool,
}

impl rdkafka::ClientContext for ReaderContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (topic, stats) in statistics.topics {
            // Partition -1 is librdkafka's own (not yet assigned messages).
            for (partition, stats) in stats.partitions.into_iter().filter(|(p, _)| *p >= 0) {
                let end = if self.read_committed && stats.ls_offset >= 0 {
                    stats.ls_offset
                } else {
                    stats.hi_offset
                };
                if end >= 0 {
                    ends.insert((topic.clone(), partition), end);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// The receiver's state, on its blocking thread.
struct Receiver {
    spec: KafkaSpec,
    ctx: SourceContext,
    handle: Handle,
    consumer: Arc<BaseConsumer<ReaderContext>>,
    /// The consumer group offsets are committed to.
    group: String,
    /// Per partition: where it stands.
    partitions: BTreeMap<TopicPartition, PartitionReader>,
    /// Per partition: its queue of fetched messages.
    queues: BTreeMap<TopicPartition, BatchedQueue<ReaderContext>>,
    /// Records not yet sent.
    chunk: Batch,
    /// Under deterministic time: the unit (batch) being read.
    unit: u64,
    /// When the topics were last reached.
    last_contact: Instant,
    /// When partitions were last looked for.
    last_discovery: Instant,
    /// When the partitions' lag was last published.
    last_lag_report: Instant,
    /// When reading started (for `max-rate-per-partition`).
    started: Instant,
    /// The position this source last committed to the group (or tried to).
    committed_to_group: Option<SourcePosition>,
    /// Reading the batches of the log again after a restart: their
    /// positions are behind what the group may hold, so none is committed.
    replaying: bool,
}

/// One partition being read.
struct PartitionReader {
    next: i64,
    /// The end of the partition was reached after the last record.
    at_end: bool,
    /// The offset of the last end of partition reached: past `next` when
    /// transaction markers follow the last record (for the lag only).
    end_reached: i64,
    /// Records read since `started`.
    read: u64,
    /// Rate credit forgone while idle (`max-rate-per-partition`).
    forgiven: u64,
    /// `--available-now`: the partition's end when the run started; what
    /// is produced after it is left to the next run.
    stop_at: Option<i64>,
    /// Messages fetched before the partition's queue was split off (they
    /// reached the consumer's main queue), in offset order: read before
    /// anything of the partition queue, which holds only later ones.
    early: VecDeque<EarlyMessage>,
}

/// An owned copy of a message that reached the consumer's main queue.
struct EarlyMessage {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    timestamp: i64,
}

impl Receiver {
    fn open(spec: KafkaSpec, ctx: SourceContext, handle: Handle) -> Result<Self, SourceError> {
        let group = spec.group(&ctx.pipeline, &ctx.name);
        let lag_report_ms = LAG_REPORT.as_millis().to_string();
        // Prefetch: bounded well below librdkafka's default of 64 MiB per
        // partition, unless the pipeline says otherwise.
        let mut config = spec.client.config_with(&[
            ("queued.max.messages.kbytes", "16384"),
            ("fetch.wait.max.ms", "100"),
            // A full local queue backs fetching off for 10 ms, not
            // librdkafka's default second: a drained queue refills at once.
            ("fetch.queue.backoff.ms", "10"),
            // The client's statistics carry each partition's end: the lag
            // the source reports.
            ("statistics.interval.ms", &lag_report_ms),
        ]);
        let owned = [
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "true"),
            // An offset the broker no longer has is lost data: an error,
            // never a silent jump.
            ("auto.offset.reset", "error"),
        ];
        for (name, value) in owned {
            config.set(name, value);
        }
        let context = ReaderContext {
            log: LogContext {
                owner: format!("source `{}`", ctx.name),
            },
            ends: Default::default(),
            read_committed: !spec
                .client
                .properties
                .iter()
                .any(|(name, value)| name == "isolation.level" && value == "read_uncommitted"),
        };
        let consumer: BaseConsumer<ReaderContext> = config
            .create_with_context(context)
            .map_err(|e| ctx.error(format!("cannot create the Kafka consumer: {}", describe(&e))))?;
        Ok(Self {
            spec,
            ctx,
            handle,
            consumer: Arc::new(consumer),
            group,
            partitions: BTreeMap::new(),
            queues: BTreeMap::new(),
            chunk: Batch::new(),
            unit: 0,
            last_contact: Instant::now(),
            last_discovery: Instant::now(),
            last_lag_report: Instant::now(),
            started: Instant::now(),
            committed_to_group: None,
            replaying: false,
        })
    }

    fn run(mut self) -> Result<(), SourceError> {
        let read = self.read();
        if matches!(read, Err(Halt::Stopped)) {
            // Stopped early (its queue closed under it, say): the group gets
            // the end of the last batch that committed. Not after a failure:
            // with the brokers out of reach, a commit waits for the session
            // timeout before it fails, and the failure would wait with it.
            self.commit_what_committed();
        }
        match read {
            Ok(()) | Err(Halt::Stopped) => Ok(()),
            Err(Halt::Failed(error)) => Err(error),
        }
    }

    fn read(&mut self) -> Result<(), Halt> {
        let mut known: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut checkpointed = false;
        if let Some(replay) = self.ctx.replay.take() {
            // A checkpoint directory without a position of this source (a
            // first run, or batches logged before it announced its
            // partitions) is no checkpoint of it: `start` and the group's
            // offsets apply.
            checkpointed = replay.progress_after().position.is_some();
            self.unit = replay.next_batch - replay.batches.len() as u64;
            self.replaying = true;
            for input in &replay.batches {
                self.replay_batch(input)?;
                self.unit += 1;
            }
            self.replaying = false;
            if let Some(SourcePosition::Kafka { offsets }) = replay.progress_after().position {
                known = offsets
                    .into_iter()
                    .map(|at| ((at.topic, at.partition), at.offset))
                    .collect();
            }
            self.unit = replay.next_batch;
        }
        let found = self.discover_until_reached()?;
        let mut starts: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let fresh: Vec<TopicPartition> = found
            .iter()
            .filter(|tp| !known.contains_key(*tp))
            .cloned()
            .collect();
        let committed = if checkpointed {
            BTreeMap::new()
        } else {
            self.committed_offsets(&fresh)?
        };
        for tp in found {
            let start = match known.get(&tp) {
                Some(&offset) => offset,
                None => self.start_of(&tp, checkpointed, &committed)?,
            };
            starts.insert(tp, start);
        }
        self.add_partitions(starts)?;
        if self.spec.records_per_batch.is_some() && self.ctx.clock.is_some() {
            self.read_units()
        } else {
            self.read_freely()
        }
    }

    /// Reads one logged batch's ranges again, partitions in order, and ends
    /// the batch.
    fn replay_batch(&mut self, input: &BatchInput) -> Result<(), Halt> {
        let ranges = match input {
            BatchInput::Kafka { ranges } => ranges,
            // A batch cut before the source announced its partitions: it
            // held nothing of this source, and holds nothing again.
            BatchInput::Untracked => {
                self.send(Delivery::BatchEnd)?;
                return Ok(());
            }
            other => {
                return Err(self
                    .ctx
                    .error(format!("the batch log holds {other:?} for this Kafka source"))
                    .into());
            }
        };
        let start_position = position_of(ranges.iter().map(|r| (&r.topic, r.partition, r.start)));
        let end_position = position_of(ranges.iter().map(|r| (&r.topic, r.partition, r.end)));
        self.send(Delivery::Chunk(Batch::new(), Some(start_position)))?;
        let wanted: Vec<&OffsetRange> = ranges.iter().filter(|r| r.end > r.start).collect();
        if !wanted.is_empty() {
            let mut assignment = TopicPartitionList::new();
            for range in &wanted {
                assignment
                    .add_partition_offset(&range.topic, range.partition, Offset::Offset(range.start))
                    .map_err(|e| self.ctx.error(describe(&e)))?;
            }
            // Every partition's queue is split off before the partitions
            // are assigned (librdkafka then leaves their messages out of
            // the consumer's main queue).
            let mut queues = Vec::new();
            for range in &wanted {
                let queue = self
                    .consumer
                    .split_partition_queue(&range.topic, range.partition)
                    .ok_or_else(|| {
                        self.ctx
                            .error(format!("no queue for {}/{}", range.topic, range.partition))
                    })?;
                queues.push(queue);
            }
            self.consumer.incremental_assign(&assignment).map_err(|e| {
                self.ctx
                    .error(format!("cannot assign partitions: {}", describe(&e)))
            })?;
            // Readers for the ranges, so that messages fetched before the
            // split (in the main queue) are set aside for them.
            for range in &wanted {
                self.partitions.insert(
                    (range.topic.clone(), range.partition),
                    PartitionReader {
                        next: range.start,
                        at_end: false,
                        end_reached: 0,
                        read: 0,
                        forgiven: 0,
                        stop_at: None,
                        early: VecDeque::new(),
                    },
                );
            }
            self.take_main_queue(Duration::ZERO);
            for (range, queue) in wanted.into_iter().zip(&queues) {
                self.replay_range(range, queue)?;
            }
            let _ = self.consumer.unassign();
            self.queues.clear();
            self.partitions.clear();
        }
        // The end position goes out even when the last record filled (and
        // sent) the chunk: the batch must end where the log says it ends.
        let chunk = std::mem::take(&mut self.chunk);
        self.send(Delivery::Chunk(chunk, Some(end_position)))?;
        self.send(Delivery::BatchEnd)?;
        Ok(())
    }

    /// Reads `range` of one partition (assigned, its queue split off) into
    /// the chunk.
    fn replay_range(
        &mut self,
        range: &OffsetRange,
        queue: &PartitionQueue<ReaderContext>,
    ) -> Result<(), Halt> {
        let mut next = range.start;
        let mut waited = Instant::now();
        let tp = (range.topic.clone(), range.partition);
        while next < range.end {
            if self.ctx.stopping() {
                return Err(Halt::Stopped);
            }
            let mut full = false;
            if let Some(early) = self
                .partitions
                .get_mut(&tp)
                .and_then(|reader| reader.early.pop_front())
            {
                if early.offset >= next {
                    if early.offset < range.end {
                        let timestamp = stamp(&self.ctx, self.unit, early.timestamp);
                        self.chunk.push(early.key.as_deref(), &early.value, timestamp);
                        full = chunk_full(&self.chunk, &self.ctx);
                    }
                    next = early.offset + 1;
                }
                if full {
                    self.flush(None)?;
                }
                continue;
            }
            match queue.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    waited = Instant::now();
                    if message.offset() >= next {
                        if message.offset() < range.end {
                            let timestamp = stamp(&self.ctx, self.unit, message_time(&message));
                            self.chunk
                                .push(message.key(), message.payload().unwrap_or_default(), timestamp);
                            full = chunk_full(&self.chunk, &self.ctx);
                        }
                        next = message.offset() + 1;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // The rest of the range holds no record a read can see
                    // (transaction markers): the range is complete, unless
                    // the partition is shorter than the range.
                    let Ok((_, high)) = self.consumer.fetch_watermarks(
                        &range.topic,
                        range.partition,
                        Duration::from_secs(10),
                    ) else {
                        // Not known now: the next end of partition asks again.
                        continue;
                    };
                    if high >= range.end {
                        break;
                    }
                    return Err(self
                        .ctx
                        .error(format!(
                            "{}/{} ends at offset {high}, before the end {} of the range logged for batch {}: \
                             records were lost in Kafka",
                            range.topic, range.partition, range.end, self.unit
                        ))
                        .into());
                }
                Some(Err(error)) => self.consume_error(&range.topic, range.partition, &error)?,
                None => {
                    if waited.elapsed() > self.spec.give_up_after {
                        return Err(self
                            .ctx
                            .error(format!(
                                "cannot read offsets {}..{} of {}/{} again (logged for batch {}) within {}",
                                range.start,
                                range.end,
                                range.topic,
                                range.partition,
                                self.unit,
                                humantime::format_duration(self.spec.give_up_after)
                            ))
                            .into());
                    }
                }
            }
            if full {
                self.flush(None)?;
            }
        }
        Ok(())
    }

    /// The partitions of every topic, retrying until reached or given up.
    fn discover_until_reached(&mut self) -> Result<BTreeSet<TopicPartition>, Halt> {
        // Counted from the last time the brokers answered, not from now.
        let found = self.retrying_since(self.last_contact, "its topics", Self::discover)?;
        self.last_contact = Instant::now();
        Ok(found)
    }

    /// Every partition of every topic, or why they cannot be listed.
    fn discover(&self) -> Result<BTreeSet<TopicPartition>, String> {
        let mut found = BTreeSet::new();
        for topic in &self.spec.topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), self.request_timeout())
                .map_err(|e| {
                    format!(
                        "cannot reach the Kafka brokers {}: {}",
                        self.spec.client.brokers,
                        describe(&e)
                    )
                })?;
            let Some(entry) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(format!("topic `{topic}` is not in the brokers' metadata"));
            };
            if let Some(error) = entry.error() {
                let code = RDKafkaErrorCode::from(error);
                return Err(match code {
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                        format!("topic `{topic}` does not exist")
                    }
                    other => format!("topic `{topic}` is unavailable: {other}"),
                });
            }
            if entry.partitions().is_empty() {
                return Err(format!("topic `{topic}` has no partitions"));
            }
            match &self.spec.only_partitions {
                None => {
                    for partition in entry.partitions() {
                        found.insert((topic.clone(), partition.id()));
                    }
                }
                Some(only) => {
                    for &partition in only {
                        if !entry.partitions().iter().any(|p| p.id() == partition) {
                            return Err(format!("topic `{topic}` has no partition {partition}"));
                        }
                        found.insert((topic.clone(), partition));
                    }
                }
            }
        }
        Ok(found)
    }

    /// How long one request to the brokers may take: short enough that a
    /// source retries (and says so) a few times before it gives up.
    fn request_timeout(&self) -> Duration {
        (self.spec.give_up_after / 4).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// Runs `attempt` until it answers, with backoff, for at most
    /// `give-up-after`; then fails with its last reason. `what` says what
    /// the source waits for, in the log.
    fn retrying<T>(&mut self, what: &str, attempt: impl Fn(&Self) -> Result<T, String>) -> Result<T, Halt> {
        self.retrying_since(Instant::now(), what, attempt)
    }

    /// [`Self::retrying`], giving up `give-up-after` past `started`.
    fn retrying_since<T>(
        &mut self,
        started: Instant,
        what: &str,
        attempt: impl Fn(&Self) -> Result<T, String>,
    ) -> Result<T, Halt> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match attempt(self) {
                Ok(answer) => return Ok(answer),
                Err(reason) if started.elapsed() >= self.spec.give_up_after => {
                    return Err(self
                        .ctx
                        .error(format!(
                            "{reason}; gave up after {} (give-up-after)",
                            humantime::format_duration(self.spec.give_up_after)
                        ))
                        .into());
                }
                Err(reason) => {
                    tracing::warn!(
                        source = %self.ctx.name,
                        "{reason}; retrying in {} (the source fails after {} without {what})",
                        humantime::format_duration(backoff),
                        humantime::format_duration(self.spec.give_up_after)
                    );
                    self.sleep(backoff)?;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The offsets the group committed for `partitions` (none for a
    /// partition the group has no offset of). Retried while the group
    /// cannot be asked, then an error: starting from `start` instead would
    /// skip records (or read them again) without a word.
    fn committed_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>, Halt> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.retrying("its group's offsets", |source| {
            let mut list = TopicPartitionList::new();
            for (topic, partition) in partitions {
                list.add_partition(topic, *partition);
            }
            let unreadable = |why: String| {
                format!(
                    "cannot read the offsets group `{}` committed: {why}",
                    source.group
                )
            };
            let list = source
                .consumer
                .committed_offsets(list, source.request_timeout())
                .map_err(|e| unreadable(describe(&e)))?;
            let mut committed = BTreeMap::new();
            for elem in list.elements() {
                if let Err(error) = elem.error() {
                    return Err(unreadable(format!(
                        "{}/{}: {}",
                        elem.topic(),
                        elem.partition(),
                        describe(&error)
                    )));
                }
                if let Offset::Offset(offset) = elem.offset()
                    && offset >= 0
                {
                    committed.insert((elem.topic().to_owned(), elem.partition()), offset);
                }
            }
            Ok(committed)
        })
    }

    /// Where a partition without a checkpointed offset starts.
    fn start_of(
        &self,
        tp: &TopicPartition,
        checkpointed: bool,
        committed: &BTreeMap<TopicPartition, i64>,
    ) -> Result<i64, Halt> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(&tp.0, tp.1, Duration::from_secs(10))
            .map_err(|e| {
                self.ctx.error(format!(
                    "cannot read the offsets of {}/{}: {}",
                    tp.0,
                    tp.1,
                    describe(&e)
                ))
            })?;
        if checkpointed {
            // A partition added since the checkpoint: all of it is new.
            return Ok(low);
        }
        if let StartAt::Offsets(offsets) = &self.spec.start
            && let Some(&offset) = offsets.get(tp)
        {
            if offset < low || offset > high {
                return Err(self
                    .ctx
                    .error(format!(
                        "start offset {offset} of {}/{} is outside the offsets the broker has ({low}..{high})",
                        tp.0, tp.1
                    ))
                    .into());
            }
            return Ok(offset);
        }
        if let Some(&offset) = committed.get(tp) {
            if offset < low {
                return Err(self
                    .ctx
                    .error(format!(
                        "group `{}` committed offset {offset} of {}/{}, but the broker's earliest offset is {low} \
                         (deleted by retention?): records would be lost; set `start` to an offset to go on",
                        self.group, tp.0, tp.1
                    ))
                    .into());
            }
            return Ok(offset.min(high));
        }
        Ok(match self.spec.start {
            StartAt::Earliest => low,
            _ => high,
        })
    }

    /// Starts reading `starts` (partition → first offset): announces them
    /// with their starts (so the batch log knows where their ranges begin),
    /// then assigns them.
    fn add_partitions(&mut self, starts: BTreeMap<TopicPartition, i64>) -> Result<(), Halt> {
        if starts.is_empty() {
            return Ok(());
        }
        // The records so far end where the known partitions stand now.
        self.flush(Some(self.position()))?;
        for (tp, start) in &starts {
            tracing::info!(source = %self.ctx.name, "reading {}/{} from offset {start}", tp.0, tp.1);
            // `--available-now` reads up to the end the partition has now:
            // without it, the run could read on for as long as records come.
            let stop_at = if self.ctx.available_now {
                let end = self.retrying("the ends of its partitions", |source| {
                    source
                        .consumer
                        .fetch_watermarks(&tp.0, tp.1, source.request_timeout())
                        .map(|(_, high)| high)
                        .map_err(|e| format!("cannot read the end of {}/{}: {}", tp.0, tp.1, describe(&e)))
                })?;
                Some(end)
            } else {
                None
            };
            self.partitions.insert(
                tp.clone(),
                PartitionReader {
                    next: *start,
                    at_end: false,
                    end_reached: 0,
                    read: 0,
                    forgiven: 0,
                    stop_at,
                    early: VecDeque::new(),
                },
            );
        }
        let position = self.position();
        self.send(Delivery::Chunk(Batch::new(), Some(position)))?;
        let mut list = TopicPartitionList::new();
        for (tp, start) in &starts {
            list.add_partition_offset(&tp.0, tp.1, Offset::Offset(*start))
                .map_err(|e| self.ctx.error(describe(&e)))?;
        }
        // Queues are split off before the assignment, so that librdkafka
        // routes every message of these partitions to them; anything that
        // still reached the main queue is set aside, in order, to be read
        // first.
        for tp in starts.keys() {
            let queue = self
                .consumer
                .split_partition_queue(&tp.0, tp.1)
                .and_then(|split| BatchedQueue::new(&self.consumer, split, &tp.0, tp.1))
                .ok_or_else(|| self.ctx.error(format!("no queue for {}/{}", tp.0, tp.1)))?;
            self.queues.insert(tp.clone(), queue);
        }
        self.consumer.incremental_assign(&list).map_err(|e| {
            self.ctx
                .error(format!("cannot assign partitions: {}", describe(&e)))
        })?;
        self.take_main_queue(Duration::ZERO);
        Ok(())
    }

    /// Reads whatever arrives, in chunks, until stopped (or, available
    /// now, until every partition is at its end).
    fn read_freely(&mut self) -> Result<(), Halt> {
        let keys: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        let mut keys = keys;
        loop {
            if self.ctx.stopping() {
                self.flush(Some(self.position()))?;
                self.commit_last_batches();
                return Err(Halt::Stopped);
            }
            let mut got = 0usize;
            for tp in &keys {
                got += self.drain_partition(tp, 4096)?;
            }
            if got == 0 {
                self.flush(Some(self.position()))?;
                if self.ctx.available_now && self.partitions.values().all(|p| p.at_end) {
                    self.commit_last_batches();
                    return Ok(());
                }
                self.idle()?;
            }
            // Also under load: offsets to commit, partitions to find.
            if self.maintain()? {
                keys = self.partitions.keys().cloned().collect();
            }
        }
    }

    /// Deterministic batches: `records-per-batch` records of every
    /// partition, partitions in order, then a batch end.
    fn read_units(&mut self) -> Result<(), Halt> {
        let per_unit = self.spec.records_per_batch.unwrap_or(1);
        loop {
            let keys: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
            let mut total = 0u64;
            for tp in &keys {
                let mut taken = 0u64;
                while taken < per_unit {
                    if self.ctx.stopping() {
                        return Err(Halt::Stopped);
                    }
                    let got = self.drain_partition(tp, (per_unit - taken) as usize)? as u64;
                    taken += got;
                    if got == 0 {
                        if self.ctx.available_now && self.partitions[tp].at_end {
                            break;
                        }
                        self.idle()?;
                        self.maintain()?;
                    }
                }
                total += taken;
            }
            if total == 0 && self.ctx.available_now && self.partitions.values().all(|p| p.at_end) {
                self.flush(Some(self.position()))?;
                self.commit_last_batches();
                return Ok(());
            }
            self.flush(Some(self.position()))?;
            self.send(Delivery::BatchEnd)?;
            self.unit += 1;
            self.maintain()?;
        }
    }

    /// Takes up to `limit` waiting records of one partition into the chunk
    /// (none while its rate is used up); returns how many.
    fn drain_partition(&mut self, tp: &TopicPartition, limit: usize) -> Result<usize, Halt> {
        let allowed = match self.spec.max_rate_per_partition {
            Some(rate) => {
                // Credit earned while idle is capped at a tenth of a second
                // of the rate: a partition that waited is not then read in
                // one burst.
                let burst = rate.div_ceil(10);
                let earned = (self.started.elapsed().as_secs_f64() * rate as f64) as u64 + burst;
                let reader = self.partitions.get_mut(tp).expect("partition is read");
                let mut allowed = earned.saturating_sub(reader.read + reader.forgiven);
                if allowed > burst {
                    reader.forgiven += allowed - burst;
                    allowed = burst;
                }
                allowed as usize
            }
            None => usize::MAX,
        };
        let limit = limit.min(allowed);
        let mut taken = 0;
        if let Some(reader) = self.partitions.get_mut(tp)
            && reader.stop_at.is_some_and(|stop| reader.next >= stop)
        {
            reader.at_end = true;
            return Ok(0);
        }
        while taken < limit {
            let Some(reader) = self.partitions.get_mut(tp) else {
                break;
            };
            let Some(early) = reader.early.pop_front() else {
                break;
            };
            if early.offset < reader.next {
                continue;
            }
            if reader.stop_at.is_some_and(|stop| early.offset >= stop) {
                reader.at_end = true;
                return Ok(taken);
            }
            reader.next = early.offset + 1;
            reader.read += 1;
            let timestamp = stamp(&self.ctx, self.unit, early.timestamp);
            self.chunk.push(early.key.as_deref(), &early.value, timestamp);
            taken += 1;
            if chunk_full(&self.chunk, &self.ctx) {
                self.flush(Some(self.position()))?;
            }
        }
        while taken < limit {
            let (Some(queue), Some(reader)) = (self.queues.get_mut(tp), self.partitions.get_mut(tp)) else {
                break;
            };
            // Taken messages leave librdkafka's prefetch bound: no more
            // than the chunk has room for.
            let room = self
                .ctx
                .chunks
                .chunk_limit(self.ctx.chunk_records)
                .saturating_sub(self.chunk.len());
            if !queue.pending() && queue.refill((limit - taken).min(room.max(1))) == 0 {
                break;
            }
            let mut full = false;
            let mut ended = false;
            let mut failure = None;
            let before = taken;
            while taken < limit && !full {
                let Some(message) = queue.next() else {
                    break;
                };
                match message.error() {
                    None => {
                        if message.offset() < reader.next {
                            continue;
                        }
                        if reader.stop_at.is_some_and(|stop| message.offset() >= stop) {
                            // Past the run's snapshot: the next run reads it.
                            reader.at_end = true;
                            ended = true;
                            break;
                        }
                        reader.next = message.offset() + 1;
                        reader.at_end = false;
                        reader.read += 1;
                        let timestamp = stamp(
                            &self.ctx,
                            self.unit,
                            message.timestamp().unwrap_or_else(super::now_ms),
                        );
                        self.chunk.push(message.key(), message.payload(), timestamp);
                        taken += 1;
                        full = chunk_full(&self.chunk, &self.ctx);
                    }
                    Some(KafkaError::PartitionEOF(_)) => {
                        reader.at_end = true;
                        reader.end_reached = message.offset();
                        ended = true;
                        break;
                    }
                    Some(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            if taken > before {
                self.last_contact = Instant::now();
            }
            if let Some(error) = failure {
                self.consume_error(&tp.0, tp.1, &error)?;
                break;
            }
            if full {
                self.flush(Some(self.position()))?;
            } else if ended {
                break;
            }
        }
        Ok(taken)
    }

    /// Waits a little for records, serving the consumer's events meanwhile.
    fn idle(&mut self) -> Result<(), Halt> {
        self.take_main_queue(Duration::from_millis(10));
        Ok(())
    }

    /// Serves the consumer's main queue (its events), waiting up to `wait`
    /// for the first; messages found there were fetched before their
    /// partition's queue was split off and are set aside, in order, to be
    /// read first.
    fn take_main_queue(&mut self, wait: Duration) {
        let mut wait = wait;
        while let Some(result) = self.consumer.poll(wait) {
            wait = Duration::ZERO;
            match result {
                Ok(message) => {
                    let key = (message.topic().to_owned(), message.partition());
                    let Some(reader) = self.partitions.get_mut(&key) else {
                        continue;
                    };
                    let after = reader.early.back().map_or(reader.next, |last| last.offset + 1);
                    if message.offset() >= after {
                        reader.at_end = false;
                        reader.early.push_back(EarlyMessage {
                            offset: message.offset(),
                            key: message.key().map(<[u8]>::to_vec),
                            value: message.payload().unwrap_or_default().to_vec(),
                            timestamp: message_time(&message),
                        });
                    }
                }
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(error) => tracing::debug!(source = %self.ctx.name, "kafka: {}", describe(&error)),
            }
        }
    }

    /// Periodic work: commits the offsets of committed batches to the group,
    /// looks for new partitions and checks the topics are reachable (every
    /// `discovery-interval`).
    /// Returns true when partitions were added.
    fn maintain(&mut self) -> Result<bool, Halt> {
        self.commit_to_group();
        self.report_lag();
        if self.last_discovery.elapsed() < self.spec.discovery_interval {
            return Ok(false);
        }
        self.last_discovery = Instant::now();
        match self.discover() {
            Ok(found) => {
                self.last_contact = Instant::now();
                let new: BTreeMap<TopicPartition, i64> = found
                    .into_iter()
                    .filter(|tp| !self.partitions.contains_key(tp))
                    .filter_map(|tp| {
                        // A partition whose offsets cannot be read now is
                        // added at the next look.
                        let (low, _) = self
                            .consumer
                            .fetch_watermarks(&tp.0, tp.1, self.request_timeout())
                            .ok()?;
                        Some((tp, low))
                    })
                    .collect();
                let added = !new.is_empty();
                if added {
                    tracing::info!(source = %self.ctx.name, "{} new partition(s) found", new.len());
                }
                self.add_partitions(new)?;
                Ok(added)
            }
            Err(reason) => {
                let waited = self.last_contact.elapsed();
                if waited >= self.spec.give_up_after {
                    return Err(self
                        .ctx
                        .error(format!(
                            "{reason}; gave up after {} without reaching the topics (give-up-after); \
                             every batch logged so far is in the batch log, and the rest is still in Kafka",
                            humantime::format_duration(self.spec.give_up_after)
                        ))
                        .into());
                }
                tracing::warn!(
                    source = %self.ctx.name,
                    "{reason}; retrying (the source fails after {} without its topics)",
                    humantime::format_duration(self.spec.give_up_after)
                );
                Ok(false)
            }
        }
    }

    /// Every [`LAG_REPORT`]: serves the client's statistics (also under
    /// load, when the source does not idle) and publishes each partition's
    /// next offset against its end.
    fn report_lag(&mut self) {
        if self.last_lag_report.elapsed() < LAG_REPORT {
            return;
        }
        self.last_lag_report = Instant::now();
        self.take_main_queue(Duration::ZERO);
        let ends = self
            .consumer
            .context()
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let lags = self
            .partitions
            .iter()
            .filter_map(|(tp, reader)| {
                Some(crate::source::lag::PartitionLag {
                    partition: format!("{}/{}", tp.0, tp.1),
                    // Transaction markers after the last record are read
                    // once the end is reached.
                    position: reader.next.max(reader.end_reached),
                    end: *ends.get(tp)?,
                })
            })
            .collect();
        self.ctx.lag.publish(lags);
    }

    /// Commits the offsets after the last batch the pipeline committed.
    fn commit_to_group(&mut self) {
        let Ok(true) = self.ctx.committed.has_changed() else {
            return;
        };
        let committed = self.ctx.committed.borrow_and_update().clone();
        self.commit_position(committed.as_ref(), CommitMode::Async);
    }

    /// Commits `position` to the group and remembers it as the last one
    /// this source committed (also when the commit failed: it is not tried
    /// again at the end).
    fn commit_position(&mut self, position: Option<&SourcePosition>, mode: CommitMode) {
        if position.is_some() {
            commit_offsets(&self.consumer, &self.ctx.name, position, mode);
            self.committed_to_group = position.cloned();
        }
    }

    /// Commits the end of the last batch the pipeline committed to the
    /// group, synchronously, unless this source committed that position
    /// already. (An exactly-once Kafka sink may have put the next batch's
    /// offsets in its transaction before a later step of that batch failed:
    /// committing the older position again would take the group back.)
    fn commit_what_committed(&mut self) {
        let committed = self.ctx.committed.borrow().clone();
        if committed.is_some() && committed != self.committed_to_group {
            self.commit_position(committed.as_ref(), CommitMode::Sync);
        }
    }

    /// At the end of the source (input read, or a stop): waits, up to
    /// [`LAST_COMMIT_WAIT`], for the batches holding the last records to
    /// commit, and commits their offsets to the group, so that the group
    /// does not lag behind the last batch. When they never commit (a stop
    /// [`StopMode::Now`](crate::pipeline::StopMode::Now) drops what was
    /// queued), the group gets the end of the last batch that did,
    /// synchronously, unless this source committed it already.
    fn commit_last_batches(&mut self) {
        let last = self.position();
        let until = Instant::now() + LAST_COMMIT_WAIT;
        loop {
            if self.ctx.committed.borrow_and_update().as_ref() == Some(&last) {
                self.commit_position(Some(&last), CommitMode::Sync);
                return;
            }
            let left = until.saturating_duration_since(Instant::now());
            let changed = self
                .handle
                .block_on(async { tokio::time::timeout(left, self.ctx.committed.changed()).await });
            // Timed out, or the pipeline is gone.
            if !matches!(changed, Ok(Ok(()))) {
                self.commit_what_committed();
                return;
            }
        }
    }

    /// A consume error of one partition: lost data fails the source; the
    /// rest is logged (librdkafka retries by itself).
    fn consume_error(&self, topic: &str, partition: i32, error: &KafkaError) -> Result<(), Halt> {
        if let Some(code) = error.rdkafka_error_code()
            && matches!(
                code,
                RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset
            )
        {
            return Err(self
                .ctx
                .error(format!(
                    "{topic}/{partition}: the broker no longer has the next offset to read \
                     (deleted by retention?), so records would be lost: {}",
                    describe(error)
                ))
                .into());
        }
        tracing::warn!(source = %self.ctx.name, "{topic}/{partition}: {}", describe(error));
        Ok(())
    }

    /// The next offset of every partition.
    fn position(&self) -> SourcePosition {
        position_of(
            self.partitions
                .iter()
                .map(|((topic, partition), reader)| (topic, *partition, reader.next)),
        )
    }

    /// Sends the chunk with `position` (a chunk without records only when
    /// it carries a position).
    fn flush(&mut self, position: Option<SourcePosition>) -> Result<(), Halt> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.send(Delivery::Chunk(chunk, position))
    }

    /// Sends `delivery`, waiting while the queue is full. A full queue
    /// holds the source here for as long as the pipeline is behind; the
    /// batches that commit meanwhile are committed to the group as they do
    /// (not while replaying), so that its lag stays true under
    /// backpressure too.
    fn send(&mut self, delivery: Delivery) -> Result<(), Halt> {
        let Self {
            handle,
            ctx,
            consumer,
            committed_to_group,
            replaying,
            ..
        } = self;
        handle.block_on(async {
            let send = ctx.chunks.send(delivery);
            tokio::pin!(send);
            let mut watching = !*replaying;
            loop {
                tokio::select! {
                    sent = &mut send => return sent.map_err(Halt::from),
                    changed = ctx.committed.changed(), if watching => {
                        if changed.is_err() {
                            // The pipeline is going: only the send is left.
                            watching = false;
                            continue;
                        }
                        let committed = ctx.committed.borrow_and_update().clone();
                        commit_offsets(consumer, &ctx.name, committed.as_ref(), CommitMode::Async);
                        *committed_to_group = committed;
                    }
                }
            }
        })
    }

    fn sleep(&mut self, pause: Duration) -> Result<(), Halt> {
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if self.ctx.stopping() {
                return Err(Halt::Stopped);
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        Ok(())
    }
}

/// Commits the Kafka offsets of `position` to `consumer`'s group (nothing
/// for another kind of position). A failure is logged: the group's offsets
/// serve lag monitoring and a start without a checkpoint, never recovery.
fn commit_offsets(
    consumer: &BaseConsumer<ReaderContext>,
    source: &str,
    position: Option<&SourcePosition>,
    mode: CommitMode,
) {
    let Some(SourcePosition::Kafka { offsets }) = position else {
        return;
    };
    let mut list = TopicPartitionList::new();
    for at in offsets {
        let _ = list.add_partition_offset(&at.topic, at.partition, Offset::Offset(at.offset));
    }
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::debug!(source, "cannot commit offsets to the group: {}", describe(&error));
    }
}

/// A record's timestamp: the batch time of `unit` under deterministic time,
/// else `own` (the message's).
fn stamp(ctx: &SourceContext, unit: u64, own: i64) -> i64 {
    match ctx.clock {
        Some(_) => ctx.timestamp(unit),
        None => own,
    }
}

/// True when `chunk` is as large as a chunk of this source gets (the
/// pipeline's `chunk-records`, fewer for a paced source, or 1 MiB).
fn chunk_full(chunk: &Batch, ctx: &SourceContext) -> bool {
    chunk.len() >= ctx.chunks.chunk_limit(ctx.chunk_records) || chunk.data_bytes() >= super::CHUNK_BYTES
}

/// A message's timestamp, or the wall clock when it has none.
fn message_time(message: &BorrowedMessage<'_>) -> i64 {
    message.timestamp().to_millis().unwrap_or_else(super::now_ms)
}

/// A Kafka position from `(topic, partition, next offset)`s.
fn position_of<'a>(offsets: impl Iterator<Item = (&'a String, i32, i64)>) -> SourcePosition {
    let mut offsets: Vec<PartitionOffset> = offsets
        .map(|(topic, partition, offset)| PartitionOffset {
            topic: topic.clone(),
            partition,
            offset,
        })
        .collect();
    offsets.sort();
    SourcePosition::Kafka { offsets }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(valid_topic("events.v1_x-2"));
        assert!(!valid_topic(""));
        assert!(!valid_topic("a b"));
        assert!(!valid_topic(".."));
        assert!(!valid_topic(&"x".repeat(250)));
    }
}
