//! The Kafka sink: each batch's records to one topic.
//!
//! - **Records**: the record's key is the Kafka key and its timestamp the
//!   message timestamp. `format = "value"` (the default) sends the value as
//!   it is; `format = "json"` sends the object the files sink's `jsonl`
//!   writes (key, value, timestamp, and the window for window streams).
//! - **`delivery = "at-least-once"`** (the default): a batch is done when the
//!   broker acknowledged every record (`acks = all`, idempotent producer);
//!   a batch run again after a crash is sent again.
//! - **`delivery = "exactly-once"`**: one transaction per batch. The
//!   transactional id is `transactional-id`, by default
//!   `weir.<pipeline>.<sink>`. Each transaction also commits the batch id,
//!   as the offset of partition 0 of the topic in the group
//!   `weir-sink.<transactional id>`, with the sink's producer generation
//!   in the offset's metadata; generation N writes as `<id>.gen<N>`. On
//!   open, the sink takes the recorded generation's producer over (`<id>`
//!   for generation 0), which aborts whatever transaction that run left
//!   open and fences its producer, starts the next generation, reads the
//!   marker again (stable now) to skip the batches a crashed run had
//!   already committed, and records the new generation before its first
//!   batch (`KafkaSink::open_exactly_once` tells why in that order). A new producer id after
//!   every takeover keeps the output readable on brokers that list aborted
//!   transactions a fetch does not overlap (librdkafka then skips the
//!   producer id's later batches until its abort marker, which such a
//!   fetch never reaches). So a
//!   `read_committed` consumer sees every batch exactly once after any
//!   number of crashes. This needs `checkpoint-dir` (batch ids start again
//!   at 0 in a run without one, so every run's batches are sent: each
//!   batch is still atomic). When a Kafka source of the same brokers feeds the
//!   pipeline and this is the pipeline's last sink, the source's offsets
//!   after the batch are committed to its group in the same transaction
//!   (the engine tells only the last sink where the sources stand).
//! - **In a cluster task** the exactly-once batches go through the
//!   process's shared transactional producer instead, one transaction per
//!   process per batch ([`ProcessTransactions`]): the task's generation producer then
//!   only guards its marker, which also names the process producer writing
//!   the task (fenced by the next owner, unless the task was released on a
//!   clean close).
//! - **`on-error`**: a record the broker or client rejects (too large, or
//!   invalid) fails the batch (`"fail"`, the default), or goes to the
//!   `dead-letter-topic` (`"dead-letter"`) as a JSON object with the error,
//!   the batch id, the record's size, its key and the first 1 KiB of its
//!   value. Anything else (brokers unreachable past `timeout`) fails the
//!   batch: the pipeline stops and a restart sends it again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use self::delivery::{DeliveryContext, Ledgers, SendError, SinkProducer, Writer};
use self::shared::{Incarnation, JoinError, Outcome, SharedProducer};
pub use self::shared::{ProcessTransactions, TransactionCounts};
use super::{BatchInfo, Sink, SinkContext, SinkError};
use crate::config::{Key, KindContext, Settings, SinkConfig, SinkSpec, SinkType, SpecError, duration};
use crate::kafka::{ClientSettings, LogContext, describe, entry_metadata};
use crate::record::{Partition, RecordRef};
use crate::source::kafka::valid_topic;

mod delivery;
mod shared;

/// Client properties the Kafka sink sets itself, and why.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use the `brokers` key"),
    ("metadata.broker.list", "use the `brokers` key"),
    ("transactional.id", "use the `transactional-id` key"),
    ("enable.idempotence", "the sink's `delivery` sets it"),
];

/// What the metadata of the marker's offset starts with: the producer
/// generation and the run follow ([`Marker::metadata`]).
const GENERATION_METADATA: &str = "weir-producer-generation=";

/// How a Kafka sink delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaDelivery {
    /// Every record acknowledged; a re-run batch is sent again.
    AtLeastOnce,
    /// One transaction per batch; a re-run batch is not sent twice.
    ExactlyOnce,
}

/// What a Kafka message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaFormat {
    /// The record's value as it is.
    Value,
    /// A JSON object: key, value, timestamp (and window).
    Json,
}

/// Settings of the Kafka sink (`type = "kafka"`).
#[derive(Debug, Clone)]
pub struct KafkaSinkSpec {
    /// Brokers and client properties.
    pub client: ClientSettings,
    /// The topic written.
    pub topic: String,
    /// At least once, or exactly once.
    pub delivery: KafkaDelivery,
    /// What a message holds.
    pub format: KafkaFormat,
    /// The transactional id (exactly once); derived from the pipeline and
    /// sink names when not set.
    pub transactional_id: Option<String>,
    /// What the transactional id starts with (a tenant's prefix; see
    /// [`crate::config::Scope::ids_prefix`]).
    pub ids_prefix: Option<String>,
    /// Where rejected records go; `None`: they fail the batch.
    pub dead_letter_topic: Option<String>,
    /// How long a batch may wait for the brokers.
    pub timeout: Duration,
    /// In a cluster task: the process's shared transactional producers,
    /// which exactly-once batches go through (one transaction per process
    /// per batch); `None`: the sink's own producer.
    pub shared: Option<Arc<ProcessTransactions>>,
}

impl SinkType for KafkaSinkSpec {
    const NAME: &'static str = "kafka";
    const KEYS: &'static [Key] = &[
        Key::text("brokers"),
        Key::text("topic"),
        Key::text("delivery"),
        Key::text("format"),
        Key::text("transactional-id"),
        Key::text("on-error"),
        Key::text("dead-letter-topic"),
        Key::text("timeout"),
        Key::any("properties"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let client = ClientSettings::parse(
            settings.text("brokers"),
            settings.any("properties"),
            OWNED_PROPERTIES,
            cx.offset,
            "a `kafka` sink",
            cx.paths.confined(),
        )?;
        let topic = crate::config::required(settings.text("topic"), "topic", cx.offset, "a `kafka` sink")?;
        let checked_topic = |text: &toml::Spanned<String>| {
            if valid_topic(text.get_ref()) {
                Ok(text.get_ref().clone())
            } else {
                Err((
                    text.span().start,
                    format!(
                        "invalid topic name {:?} (1-249 letters, digits, `.`, `_` or `-`)",
                        text.get_ref()
                    ),
                ))
            }
        };
        let topic = checked_topic(settings.text("topic").expect("required above"))
            .map_err(|(at, message)| (at, format!("{message} in `topic = {topic:?}`")))?;
        let choice = |key: &str, options: &[&str]| -> Result<Option<usize>, SpecError> {
            match settings.text(key) {
                None => Ok(None),
                Some(text) => options
                    .iter()
                    .position(|option| option == text.get_ref())
                    .map(Some)
                    .ok_or_else(|| {
                        (
                            text.span().start,
                            format!(
                                "unknown {key} `{}` (expected {})",
                                text.get_ref(),
                                options.join(" or ")
                            ),
                        )
                    }),
            }
        };
        let delivery = match choice("delivery", &["at-least-once", "exactly-once"])? {
            Some(1) => KafkaDelivery::ExactlyOnce,
            _ => KafkaDelivery::AtLeastOnce,
        };
        let format = match choice("format", &["value", "json"])? {
            Some(1) => KafkaFormat::Json,
            _ => KafkaFormat::Value,
        };
        let dead_letter_topic = match (
            choice("on-error", &["fail", "dead-letter"])?,
            settings.text("dead-letter-topic"),
        ) {
            (Some(1), Some(topic)) => Some(checked_topic(topic)?),
            (Some(1), None) => {
                return Err((
                    settings.text("on-error").expect("set").span().start,
                    "on-error = \"dead-letter\" needs `dead-letter-topic`, the topic rejected records go to"
                        .to_owned(),
                ));
            }
            (_, Some(topic)) => {
                return Err((
                    topic.span().start,
                    "`dead-letter-topic` is only used with on-error = \"dead-letter\"".to_owned(),
                ));
            }
            _ => None,
        };
        let transactional_id = settings.text("transactional-id").map(|id| id.get_ref().clone());
        if transactional_id.is_some() && delivery != KafkaDelivery::ExactlyOnce {
            return Err((
                settings.text("transactional-id").expect("set").span().start,
                "`transactional-id` is only used with delivery = \"exactly-once\"".to_owned(),
            ));
        }
        Ok(Self {
            client,
            topic,
            delivery,
            format,
            transactional_id,
            ids_prefix: cx.ids_prefix.map(str::to_owned),
            dead_letter_topic,
            timeout: match settings.text("timeout") {
                Some(text) => duration(text)?,
                None => Duration::from_secs(60),
            },
            shared: None,
        })
    }
}

impl KafkaSinkSpec {
    /// The transactional id of sink `sink` of `pipeline`: `transactional-id`,
    /// or `weir.<pipeline>.<sink>`, after the scope's prefix (a tenant's).
    pub fn transactional_id(&self, pipeline: &str, sink: &str) -> String {
        let id = self
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("weir.{pipeline}.{sink}"));
        format!("{}{id}", self.ids_prefix.as_deref().unwrap_or_default())
    }
}

impl SinkConfig for KafkaSinkSpec {
    fn reach(&self) -> crate::config::Reach {
        self.client.reach()
    }

    fn build(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Box<dyn Sink> {
        let transactional_id = self.transactional_id(cx.pipeline, &spec.name);
        Box::new(KafkaSink {
            name: spec.name.clone(),
            spec: self.clone(),
            window_ms: cx.window_ms,
            pipeline: cx.pipeline.to_owned(),
            checkpointed: cx.checkpointed,
            transactional_id,
            generation: 0,
            run: run_token(),
            producer: None,
            batch_deadline: None,
            marker: None,
            source_offsets: Vec::new(),
            sources_now: Vec::new(),
            sources_committed: Vec::new(),
            source_groups: std::collections::HashMap::new(),
            next_batch: 0,
            ledgers: Arc::default(),
            shared: match (&self.shared, self.delivery) {
                (Some(process), KafkaDelivery::ExactlyOnce) => Some(process.producer_for(self)),
                _ => None,
            },
            incarnation: None,
            releasable: false,
        })
    }
}

/// Writes batches to a Kafka topic.
pub struct KafkaSink {
    name: String,
    spec: KafkaSinkSpec,
    window_ms: Option<i64>,
    /// The pipeline's name (part of its sources' default group names).
    pipeline: String,
    /// Batch ids go on across restarts (else the marker means nothing to
    /// a new run: its batch 0 is new output).
    checkpointed: bool,
    transactional_id: String,
    /// Exactly once: the generation of the producer (its transactional id
    /// is [`KafkaSink::producer_id`] of it).
    generation: u64,
    /// Exactly once: this run's token, in every marker it writes (see
    /// [`Marker::run`]).
    run: String,
    /// The sink's own producer: every batch's, or in a cluster task the
    /// one that holds the task's producer generation (its marker's lock).
    producer: Option<SinkProducer>,
    /// When the batch being written runs out of its `timeout`.
    batch_deadline: Option<Instant>,
    /// Exactly once: a consumer of the marker group, for its metadata.
    marker: Option<BaseConsumer<LogContext>>,
    /// Exactly once: the first batch not yet committed to Kafka.
    next_batch: u64,
    /// Exactly once: the offsets Kafka sources of the same brokers stand at
    /// after the batch being written, per consumer group; committed in the
    /// batch's transaction.
    source_offsets: Vec<(String, TopicPartitionList)>,
    /// Exactly once: those offsets as `(group, topic, partition, offset)`.
    sources_now: Vec<(String, String, i32, i64)>,
    /// Exactly once: the offsets the last committed transaction committed.
    sources_committed: Vec<(String, String, i32, i64)>,
    /// A consumer per source group, for the group's metadata.
    source_groups: std::collections::HashMap<String, BaseConsumer<LogContext>>,
    /// Delivery reports of the sink's own producer.
    ledgers: Arc<Ledgers>,
    /// In a cluster task: the process's producer that batches go through.
    shared: Option<Arc<SharedProducer>>,
    /// The shared producer's incarnation this run writes through (opened
    /// with; a replaced one ends the run as superseded).
    incarnation: Option<Arc<Incarnation>>,
    /// In a cluster task: the run opened and no batch failed, so it lets
    /// the task go on close (after a failure, the next owner fences the
    /// process producer instead: a failed batch's fate may be unknown).
    releasable: bool,
}

impl KafkaSink {
    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message: message.into(),
            superseded: false,
        }
    }

    /// The group whose offset records the last committed batch.
    fn marker_group(&self) -> String {
        format!("weir-sink.{}", self.transactional_id)
    }

    /// The transactional id of the producer of `generation`.
    fn producer_id(&self, generation: u64) -> String {
        producer_id(&self.transactional_id, generation)
    }

    /// What is left of the batch's `timeout` (all of it outside a batch).
    fn time_left(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    fn producer(&self) -> &SinkProducer {
        self.producer.as_ref().expect("the sink is open")
    }

    /// The sink's own producer as a writer (it is the only one).
    fn own_writer(&self) -> Writer<'_> {
        Writer {
            producer: self.producer(),
            ledgers: &self.ledgers,
            number: delivery::SOLE_WRITER,
        }
    }

    /// The batch's deadline (a new one outside a batch).
    fn deadline(&self) -> Instant {
        self.batch_deadline
            .unwrap_or_else(|| Instant::now() + self.spec.timeout)
    }

    /// Sends one message through `writer`. A record refused at once (too
    /// large, ...) goes to the writer's rejected records.
    fn send(
        &self,
        writer: Writer<'_>,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp: i64,
    ) -> Result<(), SinkError> {
        writer
            .send(topic, key, payload, timestamp, || self.deadline())
            .map_err(|_| {
                self.error(format!(
                    "the producer's queue stayed full until the batch's `timeout` of {} ran out \
                     (brokers unreachable?)",
                    humantime::format_duration(self.spec.timeout)
                ))
            })
    }

    /// Sends every record of the batch.
    fn send_batch(&self, writer: Writer<'_>, partitions: &[Partition]) -> Result<u64, SinkError> {
        let mut sent = 0u64;
        let mut json = Vec::new();
        for record in partitions.iter().flatten().flat_map(|chunk| chunk.iter()) {
            let payload = match self.spec.format {
                KafkaFormat::Value => record.value,
                KafkaFormat::Json => {
                    json.clear();
                    serde_json::to_writer(&mut json, &json_object(record, self.window_ms))
                        .map_err(|e| self.error(format!("cannot write JSON: {e}")))?;
                    &json
                }
            };
            self.send(writer, &self.spec.topic, record.key, payload, record.timestamp)?;
            sent += 1;
            if sent.is_multiple_of(4096) {
                writer.poll();
            }
        }
        Ok(sent)
    }

    /// Deals with the records refused during this batch: dead letters, or
    /// the batch's failure.
    fn settle_rejected(&self, writer: Writer<'_>, batch: BatchInfo) -> Result<(), SinkError> {
        let rejected = writer.ledgers.take_rejected(writer.number);
        if rejected.is_empty() {
            return Ok(());
        }
        let first = &rejected[0];
        // A transaction with a refused delivery cannot commit, dead letters
        // or not.
        if self.spec.delivery == KafkaDelivery::ExactlyOnce
            && self.spec.dead_letter_topic.is_some()
            && let Some(refused) = rejected.iter().find(|r| r.reported && r.record_at_fault)
        {
            return Err(SinkError {
                superseded: rejected.iter().any(|r| r.fenced),
                ..self.error(format!(
                    "batch {}: the brokers refused {} record(s) of `{}` in the batch's transaction, which \
                     cannot commit after that; the first: {} (record of {} bytes). Dead letters take only \
                     records the client refuses before sending them: set the producer's `message.max.bytes` \
                     to what the topic accepts",
                    batch.id,
                    rejected
                        .iter()
                        .filter(|r| r.reported && r.record_at_fault)
                        .count(),
                    self.spec.topic,
                    refused.error,
                    refused.size
                ))
            });
        }
        let dead_letters = match &self.spec.dead_letter_topic {
            Some(topic) if rejected.iter().all(|r| r.record_at_fault) => topic,
            _ => {
                return Err(SinkError {
                    superseded: rejected.iter().any(|r| r.fenced),
                    ..self.error(format!(
                        "batch {}: {} record(s) not delivered to `{}`; the first: {} (record of {} bytes)",
                        batch.id,
                        rejected.len(),
                        self.spec.topic,
                        first.error,
                        first.size
                    ))
                });
            }
        };
        tracing::warn!(
            sink = %self.name,
            "batch {}: {} record(s) rejected by `{}` go to `{dead_letters}`; the first: {}",
            batch.id,
            rejected.len(),
            self.spec.topic,
            first.error
        );
        for letter in &rejected {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            let body = serde_json::json!({
                "error": letter.error,
                "batch": batch.id,
                "topic": self.spec.topic,
                "size": letter.size,
                "key": letter.key.as_deref().map(text),
                "value": text(&letter.value_head),
            });
            let payload = serde_json::to_vec(&body).map_err(|e| self.error(e.to_string()))?;
            self.send(
                writer,
                dead_letters,
                letter.key.as_deref(),
                &payload,
                batch.time_ms,
            )?;
        }
        self.flush(writer)?;
        let again = writer.ledgers.take_rejected(writer.number);
        match again.first() {
            None => Ok(()),
            Some(failed) => Err(self.error(format!(
                "batch {}: {} dead letter(s) not delivered to `{dead_letters}`: {}",
                batch.id,
                again.len(),
                failed.error
            ))),
        }
    }

    /// Waits until every record `writer` sent is acknowledged or refused.
    fn flush(&self, writer: Writer<'_>) -> Result<(), SinkError> {
        writer.flush(self.deadline()).map_err(|error| {
            let left = match error {
                SendError::Unacknowledged(count) => format!("{count} record(s) unacknowledged"),
                SendError::QueueFull => "queue full".to_owned(),
            };
            self.error(format!(
                "records not acknowledged within the batch's `timeout` of {}: {left}",
                humantime::format_duration(self.spec.timeout),
            ))
        })
    }

    /// A producer with the sink's settings: idempotent, and transactional
    /// under `transactional_id` when one is given.
    fn create_producer(&self, transactional_id: Option<&str>) -> Result<SinkProducer, SinkError> {
        new_producer(
            &self.spec,
            &format!("sink `{}`", self.name),
            transactional_id,
            self.ledgers.clone(),
        )
        .map_err(|message| self.error(message))
    }

    /// Opens the transactional producer:
    ///
    /// 1. reads the marker (the producer generation `p` and the token of
    ///    the run that recorded it) without waiting on pending commits (a
    ///    stable read would wait for a killed run's open transaction to
    ///    time out);
    /// 2. takes `p`'s transactional id over, which aborts what that
    ///    producer left open and fences it (the producers before it were
    ///    fenced the same way by whoever started `p`);
    /// 3. starts the producer of `p + 1` (fencing a run that got there
    ///    first, or fenced by one that gets there later), which aborts a
    ///    pending record of `p + 1` that a killed run left;
    /// 4. reads the marker again, stable now. The same generation and token
    ///    as in step 1: nobody else moved the marker, and every producer
    ///    that could still write is fenced; its batch is where this run goes
    ///    on. Anything else (a run opening beside this one, or a record that
    ///    was pending in step 1 and aborted since): steps 2–4 again from
    ///    what this read found, a few times at most;
    /// 5. records `p + 1` with this run's token, in a transaction of its own
    ///    before any batch.
    ///
    /// In a cluster task, batches go through the process's shared producer
    /// (not the generation's, which only guards the marker), so step 4 has
    /// two more parts ([`KafkaSink::fence_writer`]): before the stable
    /// read, the marker is read again (not stable) and the process producer
    /// it names is fenced unless its run let the task go; after it, a
    /// producer the stable marker names and not fenced yet is fenced too,
    /// and the marker read again, final now. Step 5 records this process's
    /// producer as the writer.
    fn open_exactly_once(&mut self) -> Result<(), SinkError> {
        const ATTEMPTS: usize = 4;
        let deadline = Instant::now() + self.spec.timeout;
        let unstable = self.marker_consumer(false)?;
        let mut seen = self.read_marker(&unstable, deadline)?;
        self.marker = Some(self.marker_consumer(true)?);
        let mut attempt = 1;
        // The process producers fenced so far (each once).
        let mut fenced = Vec::new();
        let committed = loop {
            let previous = seen.generation;
            let fencing = self.create_producer(Some(&self.producer_id(previous)))?;
            self.init_transactions(&fencing, previous, deadline)?;
            drop(fencing);

            self.generation = previous.checked_add(1).ok_or_else(|| {
                self.error(format!(
                    "the group `{}` records producer generation {previous}, the last there can be",
                    self.marker_group()
                ))
            })?;
            // A new producer each time: the one before may have been fenced.
            self.producer = Some(self.create_producer(Some(&self.producer_id(self.generation)))?);
            self.init_transactions(self.producer(), self.generation, deadline)?;

            // Before the stable read: a pending marker of the process
            // producer that writes the task would hold that read until the
            // broker timed its transaction out. Which producer that is, the
            // marker says as of now, read again (the generation's release
            // it may hold was settled by step 2); a shared run only.
            if self.shared.is_some() {
                let now = self.read_marker(&unstable, deadline)?;
                self.fence_writer(&now, &mut fenced, deadline)?;
            }
            let mut stable = self.read_marker(self.marker.as_ref().expect("made above"), deadline)?;
            if stable.same_run(&seen) && self.fence_writer(&stable, &mut fenced, deadline)? {
                stable = self.read_marker(self.marker.as_ref().expect("made above"), deadline)?;
            }
            if stable.same_run(&seen) {
                break stable.next_batch;
            }
            if attempt == ATTEMPTS {
                return Err(SinkError {
                    superseded: true,
                    ..self.error(format!(
                        "the group `{}` kept moving while this run opened (producer generation {} \
                         after {}, {ATTEMPTS} times): other runs of this sink are starting",
                        self.marker_group(),
                        stable.generation,
                        seen.generation
                    ))
                });
            }
            tracing::info!(
                sink = %self.name,
                "the group `{}` moved from producer generation {} to {} while this run opened; \
                 taking over again",
                self.marker_group(),
                seen.generation,
                stable.generation
            );
            seen = stable;
            attempt += 1;
        };
        self.record_generation(committed, deadline)?;
        tracing::debug!(
            sink = %self.name,
            "producer `{}` took over from `{}`",
            self.producer_id(self.generation),
            self.producer_id(seen.generation)
        );

        self.next_batch = if self.checkpointed { committed } else { 0 };
        self.releasable = self.shared.is_some() && self.checkpointed;
        if !self.checkpointed {
            tracing::info!(
                sink = %self.name,
                "without checkpoint-dir each run's batches are new: every batch is one transaction, \
                 but a batch a crashed run committed is sent again by the next run"
            );
        }
        if self.next_batch > 0 {
            tracing::info!(
                sink = %self.name,
                "batches before {} are already committed to `{}`",
                self.next_batch,
                self.spec.topic
            );
        }
        Ok(())
    }

    /// In a cluster task: fences the process producer that `marker` names
    /// as the task's writer, unless it is this process's, its run let the
    /// task go, or it is in `fenced` already (it joins `fenced`). Returns
    /// whether it fenced: what that producer committed is final then, and
    /// what it left open is aborted. Outside a cluster task, nothing.
    ///
    /// A released marker is safe to trust when read after step 2: its run
    /// wrote the release through the generation's producer, after its last
    /// batch, and that generation is fenced by then (a release still open
    /// was aborted, one being committed is through). A marker read before
    /// step 2 may be older than the release: fencing on it would only stop
    /// a healthy process's producer for nothing.
    fn fence_writer(
        &mut self,
        marker: &Marker,
        fenced: &mut Vec<String>,
        deadline: Instant,
    ) -> Result<bool, SinkError> {
        let Some(shared) = &self.shared else {
            return Ok(false);
        };
        let incarnation = match &self.incarnation {
            Some(incarnation) => incarnation.clone(),
            None => {
                let incarnation = shared
                    .current(&format!("sink `{}`", self.name), deadline)
                    .map_err(|message| self.error(message))?;
                self.incarnation = Some(incarnation.clone());
                incarnation
            }
        };
        let writer = &marker.writer;
        if writer.is_empty() || marker.released || *writer == incarnation.id || fenced.contains(writer) {
            return Ok(false);
        }
        let fencing = self.create_producer(Some(writer))?;
        self.init_transactions_of(&fencing, writer, deadline)?;
        drop(fencing);
        tracing::info!(
            sink = %self.name,
            "fenced process producer `{writer}`: it wrote batches of this task and did not let it go \
             (its process died or lost the task)"
        );
        fenced.push(writer.clone());
        Ok(true)
    }

    /// A consumer of the marker group (it never joins the group): its
    /// reads of the marker see only committed transactions when `stable`.
    fn marker_consumer(&self, stable: bool) -> Result<BaseConsumer<LogContext>, SinkError> {
        let mut config = self.spec.client.consumer_config();
        config
            .set("group.id", self.marker_group())
            .set("enable.auto.commit", "false")
            .set(
                "isolation.level",
                if stable {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            );
        config
            .create_with_context(LogContext {
                owner: format!("sink `{}`", self.name),
            })
            .map_err(|e| self.error(format!("cannot create the marker consumer: {}", describe(&e))))
    }

    /// The marker as `consumer` reads it by `deadline` (a new sink's is
    /// all zeros).
    fn read_marker(
        &self,
        consumer: &BaseConsumer<LogContext>,
        deadline: Instant,
    ) -> Result<Marker, SinkError> {
        let unreadable = |reason: String| {
            self.error(format!(
                "cannot read the last committed batch from the group `{}` on {}: {reason}",
                self.marker_group(),
                self.spec.client.brokers
            ))
        };
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.spec.topic, 0);
        let committed = consumer
            .committed_offsets(list, step_timeout(deadline))
            .map_err(|e| unreadable(describe(&e)))?;
        let Some(elem) = committed.elements().into_iter().next() else {
            return Ok(Marker::default());
        };
        let metadata = entry_metadata(&committed, 0).unwrap_or_default();
        if let Err(error) = elem.error() {
            return Err(unreadable(describe(&error)));
        }
        let next_batch = match elem.offset() {
            Offset::Offset(next) if next > 0 => next as u64,
            _ => 0,
        };
        Ok(Marker::parse(next_batch, &metadata))
    }

    /// `init_transactions` of `producer` (of `generation`), retried with
    /// backoff until `deadline` while the brokers are not ready.
    fn init_transactions(
        &self,
        producer: &SinkProducer,
        generation: u64,
        deadline: Instant,
    ) -> Result<(), SinkError> {
        self.init_transactions_of(producer, &self.producer_id(generation), deadline)
    }

    /// [`start_transactions`] of `producer`, transactional id `id`.
    fn init_transactions_of(
        &self,
        producer: &SinkProducer,
        id: &str,
        deadline: Instant,
    ) -> Result<(), SinkError> {
        start_transactions(
            producer,
            id,
            &self.spec,
            &format!("sink `{}`", self.name),
            deadline,
        )
        .map_err(|failure| SinkError {
            superseded: failure.fenced,
            ..self.error(failure.message)
        })
    }

    /// Records the producer's generation in the marker, in a transaction of
    /// its own before any batch's: a run that takes over later fences this
    /// producer, not an older one. `committed` is the marker's batch, kept.
    /// A failed record is aborted (or, when even that fails, by the next
    /// run's start of this generation, before its stable read).
    fn record_generation(&self, committed: u64, deadline: Instant) -> Result<(), SinkError> {
        self.marker_transaction(committed, false, deadline)
            .map_err(|error| {
                let error = self.error(format!(
                    "cannot record producer generation {} in the group `{}`: {}",
                    self.generation,
                    self.marker_group(),
                    error.message
                ));
                self.fenced_instead(&error).unwrap_or(error)
            })
    }

    /// Writes the marker (`next_batch`, `released`) in a transaction of its
    /// own, through the generation's producer.
    fn marker_transaction(
        &self,
        next_batch: u64,
        released: bool,
        deadline: Instant,
    ) -> Result<(), SinkError> {
        let producer = self.producer();
        producer
            .begin_transaction()
            .map_err(|e| self.error(describe(&e)))?;
        let (marker, metadata) = self.marker_offsets(next_batch, released)?;
        let sent = producer
            .send_offsets_to_transaction(&marker, &metadata, step_timeout(deadline))
            .map_err(|e| format!("cannot write the marker: {}", describe(&e)))
            .and_then(|()| {
                producer
                    .commit_transaction(step_timeout(deadline))
                    .map_err(|e| describe(&e))
            });
        sent.map_err(|message| {
            if let Err(abort) = producer.abort_transaction(step_timeout(deadline)) {
                tracing::debug!(sink = %self.name, "cannot abort the marker's transaction: {}", describe(&abort));
            }
            self.error(message)
        })
    }

    /// The marker this run writes, as offsets of the marker group: the
    /// first batch not committed, the generation and run, the process
    /// producer that writes the batches (in a cluster task), and whether
    /// this run let the task go.
    fn marker_offsets(
        &self,
        next_batch: u64,
        released: bool,
    ) -> Result<(TopicPartitionList, ConsumerGroupMetadata), SinkError> {
        let mut marker = TopicPartitionList::new();
        let mut entry = marker.add_partition(&self.spec.topic, 0);
        entry
            .set_offset(Offset::Offset(next_batch as i64))
            .map_err(|e| self.error(describe(&e)))?;
        entry.set_metadata(
            Marker {
                next_batch,
                generation: self.generation,
                run: self.run.clone(),
                writer: self
                    .incarnation
                    .as_ref()
                    .map(|incarnation| incarnation.id.clone())
                    .unwrap_or_default(),
                released,
            }
            .metadata(),
        );
        let metadata = self
            .marker
            .as_ref()
            .and_then(|consumer| consumer.group_metadata())
            .ok_or_else(|| self.error("no metadata for the marker group"))?;
        Ok((marker, metadata))
    }

    /// One batch as one transaction, with the batch id as the marker.
    fn write_exactly_once(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        if batch.id < self.next_batch {
            tracing::info!(sink = %self.name, "batch {} is already in `{}`; not sent again", batch.id, self.spec.topic);
            return Ok(());
        }
        // A batch with nothing to write and no source offsets to move
        // needs no transaction (an idle pipeline does not open one per
        // interval); its replay after a crash writes nothing either.
        if partitions.iter().flatten().all(|chunk| chunk.is_empty())
            && (self.source_offsets.is_empty() || self.sources_now == self.sources_committed)
        {
            return Ok(());
        }
        if let Some(shared) = self.shared.clone() {
            return self.write_shared(&shared, batch, partitions);
        }
        let producer = self.producer();
        producer
            .begin_transaction()
            .map_err(|e| self.error(format!("cannot begin a transaction: {}", describe(&e))))?;
        let outcome = self.send_in_transaction(batch, partitions);
        if outcome.is_ok() {
            crate::failpoint::crash_point("kafka-committed");
        }
        if let Err(error) = outcome {
            if let Some(error) = self.fenced_instead(&error) {
                return Err(error);
            }
            if let Err(abort) = self.producer().abort_transaction(self.spec.timeout) {
                tracing::warn!(sink = %self.name, "cannot abort the transaction of batch {}: {}", batch.id, describe(&abort));
            }
            return Err(self.fenced_instead(&error).unwrap_or(error));
        }
        self.committed(batch);
        Ok(())
    }

    /// `batch` is committed, with the sources' offsets it was told.
    fn committed(&mut self, batch: BatchInfo) {
        self.next_batch = batch.id + 1;
        self.sources_committed.clone_from(&self.sources_now);
    }

    /// One batch as this task's contribution to the process's shared
    /// transaction: written again in the next one when another task's
    /// contribution doomed it, until the batch's `timeout`.
    fn write_shared(
        &mut self,
        shared: &SharedProducer,
        batch: BatchInfo,
        partitions: &[Partition],
    ) -> Result<(), SinkError> {
        let incarnation = self.incarnation.clone().expect("opened with the shared producer");
        let deadline = self.deadline();
        loop {
            let contribution = shared.join(&incarnation, deadline).map_err(|error| match error {
                JoinError::Replaced => self.lost(batch, "it was replaced"),
                JoinError::Lost(reason) => self.lost(batch, &reason),
                JoinError::TimedOut(reason) => self.start_again(batch, &reason),
            })?;
            // The contribution's work ends with its transaction's time.
            let ends_by = deadline.min(contribution.ends_by());
            self.batch_deadline = Some(ends_by);
            let contributed = self.contribute(&contribution, batch, partitions);
            self.batch_deadline = Some(deadline);
            if let Err(error) = contributed {
                // Records purged or refused by a fenced producer tell only
                // half the story: the producer is gone.
                let fatal = contribution.fatal_error();
                contribution.abandon(&error.message);
                return Err(match fatal {
                    Some(reason) => self.lost(batch, &format!("{reason}; {}", error.message)),
                    // Out of time because the transaction it joined was old,
                    // not because of the batch: the task starts again.
                    None if ends_by < deadline && Instant::now() >= ends_by => self.start_again(
                        batch,
                        &format!("the process's transaction ran out of time ({})", error.message),
                    ),
                    None => error,
                });
            }
            match contribution.commit() {
                Outcome::Committed => {
                    crate::failpoint::crash_point("kafka-committed");
                    break;
                }
                Outcome::Lost(reason) => return Err(self.lost(batch, &reason)),
                // Written again only with time for it: at least half the
                // batch's `timeout` left.
                Outcome::Aborted(reason)
                    if deadline.saturating_duration_since(Instant::now()) >= self.spec.timeout / 2 =>
                {
                    tracing::info!(
                        sink = %self.name,
                        "batch {}: the process's transaction was aborted ({reason}); \
                         writing the batch again in the next one",
                        batch.id
                    );
                }
                // Another task's failure or a slow commit, not this batch's.
                Outcome::Aborted(reason) => {
                    return Err(self.start_again(
                        batch,
                        &format!(
                            "the process's transaction was aborted ({reason}) with too little of the batch's \
                             `timeout` of {} left to write it again",
                            humantime::format_duration(self.spec.timeout)
                        ),
                    ));
                }
            }
        }
        self.committed(batch);
        Ok(())
    }

    /// Adds the batch's marker (`batch` + 1 is the next) and its sources'
    /// offsets to the open transaction, through `send`.
    fn send_batch_offsets(
        &self,
        batch: BatchInfo,
        send: impl Fn(&TopicPartitionList, &ConsumerGroupMetadata) -> rdkafka::error::KafkaResult<()>,
    ) -> Result<(), SinkError> {
        let (marker, metadata) = self.marker_offsets(batch.id + 1, false)?;
        send(&marker, &metadata).map_err(|e| {
            self.error(format!(
                "batch {}: cannot record the batch in its transaction: {}",
                batch.id,
                describe(&e)
            ))
        })?;
        for (group, offsets) in &self.source_offsets {
            let metadata = self
                .source_groups
                .get(group)
                .and_then(|consumer| consumer.group_metadata())
                .ok_or_else(|| self.error(format!("no metadata for group `{group}`")))?;
            send(offsets, &metadata).map_err(|e| {
                self.error(format!(
                    "batch {}: cannot commit the offsets of group `{group}` in its transaction: {}",
                    batch.id,
                    describe(&e)
                ))
            })?;
        }
        Ok(())
    }

    /// Sends the batch's records, its marker and its sources' offsets in
    /// `contribution`.
    fn contribute(
        &self,
        contribution: &shared::Contribution<'_>,
        batch: BatchInfo,
        partitions: &[Partition],
    ) -> Result<(), SinkError> {
        let writer = contribution.writer();
        self.send_batch(writer, partitions)?;
        self.flush(writer)?;
        self.settle_rejected(writer, batch)?;
        let deadline = self.deadline();
        self.send_batch_offsets(batch, |offsets, metadata| {
            contribution.send_offsets(offsets, metadata, deadline)
        })?;
        crate::failpoint::crash_point("kafka-sent");
        Ok(())
    }

    /// The error of a batch that could not get into a transaction for
    /// reasons of the process, not its own (others' commits were slow, or
    /// their failures aborted it): the task starts again from its last
    /// checkpoint, as a superseded one does.
    fn start_again(&self, batch: BatchInfo, reason: &str) -> SinkError {
        SinkError {
            superseded: true,
            ..self.error(format!(
                "batch {}: {reason}; nothing of it was committed, and this task starts again from its \
                 last checkpoint",
                batch.id
            ))
        }
    }

    /// The error of a batch whose process producer was lost (fenced, or
    /// its transaction's fate unknown): the task opens again, and the
    /// marker tells it what was committed.
    fn lost(&self, batch: BatchInfo, reason: &str) -> SinkError {
        SinkError {
            superseded: true,
            ..self.error(format!(
                "batch {}: the process's transactional producer is gone ({reason}); this task opens \
                 again and goes on from what its marker says was committed",
                batch.id
            ))
        }
    }

    /// Lets the task go (a cluster task that stops cleanly): records, through
    /// the generation's producer, that the process producer writes no more
    /// of it, so that its next owner does not fence that producer (and the
    /// tasks it still writes for).
    fn release(&self) -> Result<(), SinkError> {
        self.marker_transaction(self.next_batch, true, Instant::now() + self.spec.timeout)
    }

    /// When the producer was fenced (its fatal error says so), the error
    /// that says it, in place of `error` (which may only tell of records
    /// purged or a transaction refused): another run of the pipeline took
    /// the transactional id over, so this run is superseded.
    fn fenced_instead(&self, error: &SinkError) -> Option<SinkError> {
        let (code, reason) = self.producer.as_ref()?.client().fatal_error()?;
        let fenced = matches!(
            code,
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        );
        fenced.then(|| SinkError {
            sink: self.name.clone(),
            message: format!(
                "another run of this pipeline took the transactional id `{}` over and fenced this one \
                 ({reason}); nothing of the batch was committed here: {}",
                self.producer_id(self.generation),
                error.message
            ),
            superseded: true,
        })
    }

    fn send_in_transaction(&self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        let writer = self.own_writer();
        self.send_batch(writer, partitions)?;
        self.flush(writer)?;
        self.settle_rejected(writer, batch)?;
        let producer = self.producer();
        self.send_batch_offsets(batch, |offsets, metadata| {
            producer.send_offsets_to_transaction(offsets, metadata, self.time_left())
        })?;
        crate::failpoint::crash_point("kafka-sent");
        producer
            .commit_transaction(self.time_left())
            .map_err(|e| SinkError {
                superseded: fenced(&e),
                ..self.error(format!(
                    "batch {}: cannot commit its transaction{}: {}",
                    batch.id,
                    if fenced(&e) {
                        " (another run of this pipeline took the transactional id over)"
                    } else {
                        ""
                    },
                    describe(&e)
                ))
            })
    }
}

/// A producer with `spec`'s settings for `owner` (in its log lines):
/// idempotent, and transactional under `transactional_id` when one is
/// given; its delivery reports go to `ledgers`.
fn new_producer(
    spec: &KafkaSinkSpec,
    owner: &str,
    transactional_id: Option<&str>,
    ledgers: Arc<Ledgers>,
) -> Result<SinkProducer, String> {
    let timeout_ms = spec.timeout.as_millis().to_string();
    // Every step of a batch fits in `timeout` (one deadline for them
    // all): the broker aborts a transaction only after a margin more,
    // so it never expires under a batch that is still in its time (an
    // expired transaction fails as if another run had fenced this one).
    let transaction_ms = (spec.timeout + TRANSACTION_MARGIN).as_millis().to_string();
    let mut defaults = vec![("message.timeout.ms", timeout_ms.as_str()), ("linger.ms", "5")];
    if transactional_id.is_some() {
        defaults.push(("transaction.timeout.ms", &transaction_ms));
    }
    let mut config = spec.client.config_with(&defaults);
    config.set("enable.idempotence", "true");
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    let context = DeliveryContext {
        log: LogContext {
            owner: owner.to_owned(),
        },
        ledgers,
    };
    config
        .create_with_context(context)
        .map_err(|e| format!("cannot create the Kafka producer: {}", describe(&e)))
}

/// Why a producer's transactions could not start.
struct StartFailure {
    message: String,
    /// Another producer of the id started meanwhile.
    fenced: bool,
}

/// `init_transactions` of `producer` (transactional id `id`), retried with
/// backoff until `deadline` while the brokers are not ready.
fn start_transactions(
    producer: &SinkProducer,
    id: &str,
    spec: &KafkaSinkSpec,
    owner: &str,
    deadline: Instant,
) -> Result<(), StartFailure> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match producer.init_transactions(step_timeout(deadline)) {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() + backoff < deadline && retriable(&error) => {
                tracing::warn!(
                    "{owner}: cannot start transactions yet ({}); retrying in {}",
                    describe(&error),
                    humantime::format_duration(backoff)
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                let denied = matches!(
                    error.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed)
                );
                return Err(StartFailure {
                    fenced: fenced(&error),
                    message: format!(
                        "cannot start transactions with transactional id `{id}` on {}: {}{}",
                        spec.client.brokers,
                        describe(&error),
                        if denied {
                            " (Weir adds suffixes to its transactional ids, such as `.gen<N>` and \
                             `.process.<token>`: grant them as a PREFIXED resource, not a LITERAL one)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        }
    }
}

/// The transactional id of a sink's producer of `generation`: the sink's id
/// for generation 0 (what Weir used before generations), then
/// `<id>.gen<N>`.
fn producer_id(transactional_id: &str, generation: u64) -> String {
    match generation {
        0 => transactional_id.to_owned(),
        n => format!("{transactional_id}.gen{n}"),
    }
}

/// What the marker says: the offset and metadata of partition 0 of the
/// sink's topic in its marker group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Marker {
    /// The first batch not committed.
    next_batch: u64,
    /// The producer generation that wrote it; 0 when it names none (a
    /// marker written before generations: its producer's id was the sink's
    /// own).
    generation: u64,
    /// The token of the run that wrote it, unique to that run: a marker
    /// read twice with the same generation and token was not rewritten in
    /// between by another run.
    run: String,
    /// In a cluster task: the transactional id of the process producer
    /// that writes the task's batches (empty: the sink's own producer).
    writer: String,
    /// The run let the task go (a clean stop): its process producer writes
    /// no more of it, so the next owner need not fence that producer.
    released: bool,
}

impl Marker {
    /// The marker of offset `next_batch` with `metadata`.
    fn parse(next_batch: u64, metadata: &str) -> Self {
        let mut marker = Marker {
            next_batch,
            ..Marker::default()
        };
        let Some(fields) = metadata.strip_prefix(GENERATION_METADATA) else {
            return marker;
        };
        let mut fields = fields.split(';');
        marker.generation = fields.next().unwrap_or_default().parse().unwrap_or(0);
        for field in fields {
            match field.split_once('=') {
                Some(("run", run)) => marker.run = run.to_owned(),
                Some(("writer", writer)) => marker.writer = writer.to_owned(),
                Some(("released", released)) => marker.released = released == "1",
                _ => {}
            }
        }
        marker
    }

    /// The offset metadata that says it.
    fn metadata(&self) -> String {
        let mut metadata = format!("{GENERATION_METADATA}{};run={}", self.generation, self.run);
        if !self.writer.is_empty() {
            metadata.push_str(";writer=");
            metadata.push_str(&self.writer);
            if self.released {
                metadata.push_str(";released=1");
            }
        }
        metadata
    }

    /// True when `other` was written by the same run of the same
    /// generation (its batch may differ).
    fn same_run(&self, other: &Marker) -> bool {
        self.generation == other.generation && self.run == other.run
    }
}

/// A token for one run of a sink: the process, the time and a counter.
fn run_token() -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}-{nanos:x}-{run}", std::process::id())
}

/// What one step of opening the sink may take: the time left before
/// `deadline`, but at least [`MIN_STEP`] (a slow coordinator should not
/// leave a later step no time at all).
fn step_timeout(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(MIN_STEP)
}

/// The least time a step of opening the sink is given.
const MIN_STEP: Duration = Duration::from_secs(5);

/// How much longer than a batch's `timeout` the broker lets its
/// transaction stay open.
const TRANSACTION_MARGIN: Duration = Duration::from_secs(30);

/// True when trying again may help: not a fatal error, fencing,
/// a refused authorization or a misuse of the transaction API.
fn retriable(error: &KafkaError) -> bool {
    if let KafkaError::Transaction(cause) = error
        && cause.is_fatal()
    {
        return false;
    }
    !matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidTransactionalState
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTransactionTimeout
        )
    )
}

/// True when another producer took the transactional id over.
fn fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

/// The `format = "json"` object of a record.
fn json_object(record: RecordRef<'_>, window_ms: Option<i64>) -> serde_json::Value {
    let text = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::Value::String(text.to_owned()),
        Err(_) => serde_json::Value::Array(bytes.iter().map(|&b| b.into()).collect()),
    };
    let mut object = serde_json::json!({
        "key": record.key.map(text),
        "value": text(record.value),
        "timestamp": record.timestamp,
    });
    if let Some(length) = window_ms {
        let end = record.timestamp + 1;
        object["window"] = serde_json::json!({"start": end - length, "end": end});
    }
    object
}

impl Sink for KafkaSink {
    fn sources_after(&mut self, sources: &[super::SourceAfter<'_>]) {
        self.source_offsets.clear();
        self.sources_now.clear();
        if self.spec.delivery != KafkaDelivery::ExactlyOnce {
            return;
        }
        for source in sources {
            let (Some(kafka), Some(crate::source::SourcePosition::Kafka { offsets })) = (
                source.spec.kind.settings::<crate::source::kafka::KafkaSpec>(),
                source.position,
            ) else {
                continue;
            };
            // Offsets go into the transaction only on the same brokers.
            if kafka.client.brokers != self.spec.client.brokers {
                continue;
            }
            let group = kafka.group(&self.pipeline, &source.spec.name);
            if !self.source_groups.contains_key(&group) {
                let mut config = self.spec.client.consumer_config();
                config.set("group.id", &group).set("enable.auto.commit", "false");
                let context = LogContext {
                    owner: format!("sink `{}`", self.name),
                };
                match config.create_with_context::<_, BaseConsumer<LogContext>>(context) {
                    Ok(consumer) => {
                        self.source_groups.insert(group.clone(), consumer);
                    }
                    Err(error) => {
                        tracing::warn!(
                            sink = %self.name,
                            "cannot commit the offsets of group `{group}` with the output: {}",
                            describe(&error)
                        );
                        continue;
                    }
                }
            }
            let mut list = TopicPartitionList::new();
            for at in offsets {
                let _ = list.add_partition_offset(&at.topic, at.partition, Offset::Offset(at.offset));
                self.sources_now
                    .push((group.clone(), at.topic.clone(), at.partition, at.offset));
            }
            self.source_offsets.push((group, list));
        }
    }

    fn recovered(&mut self, logged_end: u64) -> Result<(), SinkError> {
        // Batches the marker says are committed must be batches of this
        // batch log (replayed now): otherwise another checkpoint directory,
        // or another pipeline, used this transactional id, and skipping
        // "committed" batches would drop this run's output.
        if self.spec.delivery == KafkaDelivery::ExactlyOnce && self.next_batch > logged_end {
            return Err(self.error(format!(
                "transactional id `{}` has committed batches up to {}, but this pipeline's batch log ends \
                 before batch {logged_end}: another checkpoint directory or pipeline used the same id. \
                 Restore the checkpoint directory, or set `transactional-id` to a new value",
                self.transactional_id,
                self.next_batch - 1
            )));
        }
        Ok(())
    }

    fn open(&mut self) -> Result<(), SinkError> {
        match self.spec.delivery {
            KafkaDelivery::ExactlyOnce => self.open_exactly_once(),
            KafkaDelivery::AtLeastOnce => {
                self.producer = Some(self.create_producer(None)?);
                Ok(())
            }
        }
    }

    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        // Everything the batch does, acknowledgements and its transaction
        // included, shares one deadline.
        self.batch_deadline = Some(Instant::now() + self.spec.timeout);
        let written = match self.spec.delivery {
            KafkaDelivery::ExactlyOnce => self.write_exactly_once(batch, partitions),
            KafkaDelivery::AtLeastOnce => {
                let writer = self.own_writer();
                self.send_batch(writer, partitions)
                    .and_then(|_| self.flush(writer))
                    .and_then(|()| self.settle_rejected(writer, batch))
            }
        };
        self.batch_deadline = None;
        if written.is_err() {
            self.releasable = false;
        }
        written
    }

    fn close(&mut self) -> Result<(), SinkError> {
        if self.releasable {
            self.releasable = false;
            match self.release() {
                Ok(()) => tracing::debug!(sink = %self.name, "let the task go at batch {}", self.next_batch),
                Err(error) => tracing::warn!(
                    sink = %self.name,
                    "cannot let the task go ({}): its next owner will fence this process's producer",
                    error.message
                ),
            }
        }
        if let Some(producer) = &self.producer {
            producer
                .flush(self.spec.timeout)
                .map_err(|e| self.error(describe(&e)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_says_its_generation_and_run_and_reads_back_what_it_wrote() {
        let marker = Marker {
            next_batch: 41,
            generation: 7,
            run: run_token(),
            ..Marker::default()
        };
        assert_eq!(Marker::parse(41, &marker.metadata()), marker);
        // A cluster task's marker also names the process producer, and
        // whether the run let the task go.
        for released in [false, true] {
            let shared = Marker {
                writer: "acme.weir.wc.process.1f-2a-0".into(),
                released,
                ..marker.clone()
            };
            assert_eq!(Marker::parse(41, &shared.metadata()), shared);
            assert!(shared.same_run(&marker));
        }
        assert!(!marker.same_run(&Marker {
            run: run_token(),
            ..marker.clone()
        }));
        assert_ne!(run_token(), run_token());
        let old = Marker::parse(3, &format!("{GENERATION_METADATA}7"));
        assert_eq!((old.next_batch, old.generation, old.run.as_str()), (3, 7, ""));
        for foreign in [
            "",
            "written by another tool",
            &format!("{GENERATION_METADATA}x;run=1"),
        ] {
            assert_eq!(Marker::parse(5, foreign).generation, 0, "{foreign}");
        }
    }

    #[test]
    fn generation_zero_is_the_sink_s_own_id_and_later_ones_add_a_suffix() {
        assert_eq!(producer_id("weir.wc.out", 0), "weir.wc.out");
        assert_eq!(producer_id("weir.wc.out", 1), "weir.wc.out.gen1");
        assert_eq!(producer_id("acme.weir.wc.out", 12), "acme.weir.wc.out.gen12");
    }
}
