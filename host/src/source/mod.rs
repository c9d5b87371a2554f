//! Receivers: tasks that pull records from the outside world and hand them to
//! the batcher in chunks through a bounded queue.
//!
//! A [`Source`] has one required method, [`Source::run`]. It pushes records
//! through a [`LineChunker`] into its queue; when the queue is full, the
//! chunker's send waits, so a slow pipeline slows its receivers (and, for a
//! socket, TCP flow control slows the producer) instead of dropping records
//! or growing memory. A source returns when it is exhausted (the end of a
//! `--available-now` run), or when asked to stop.
//!
//! - [`socket`]: lines from TCP, connecting (with reconnect and backoff) or listening.
//! - [`files`]: lines of every file that appears in a directory.
//! - [`generator`]: deterministic words text, the embedded demo and benchmark input.
//! - [`stdin`]: lines from standard input.
//! - `kafka`: records of Kafka topics, offsets logged per batch (the
//!   `kafka` cargo feature, on by default).
//! - [`redis_stream`]: entries of Redis streams through a consumer group,
//!   entry ranges logged per batch.
//! - [`zeromq`]: messages of a ZeroMQ `PULL` or `SUB` socket, through the
//!   write-ahead log.
//!
//! Each of those files also owns its kind's keys, its parser and the
//! construction of its receiver ([`crate::config::SourceType`],
//! [`crate::config::SourceConfig`]); [`TYPES`] registers them.
//!
//! Partitioned sources publish how far each partition is behind its end
//! ([`lag`]) for the live metrics.
//!
//! Every kind can be paced ([`rate`]: `max-rate`, backpressure): the queue
//! waits for the source's token bucket before it takes a chunk, and the
//! chunker cuts chunks small enough for the rate.

pub mod files;
pub mod generator;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
mod kafka_queue;
pub mod lag;
pub mod position;
pub mod rate;
pub mod redis_stream;
pub mod socket;
pub mod stdin;
pub mod wal;
pub mod zeromq;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use crate::config::{SourceEntry, SourceSpec};
use crate::record::Batch;
pub use position::{
    BatchInput, FileSegment, OffsetRange, PartitionOffset, Replay, SourcePosition, SourceProgress,
    StreamCursor, StreamRange,
};

/// A receiver failed for good.
#[derive(Debug, thiserror::Error)]
#[error("source `{source_name}`: {message}")]
pub struct SourceError {
    /// The source's stream name.
    pub source_name: String,
    /// What went wrong.
    pub message: String,
}

/// What a receiver hands to the batcher through its queue.
#[derive(Debug)]
pub enum Delivery {
    /// Records, in arrival order, and the source's position just after them
    /// (`None` for sources that keep no position).
    Chunk(Batch, Option<SourcePosition>),
    /// The end of one unit of a source with a fixed batch size (a file with
    /// `max-files-per-batch`, `records-per-batch` generator lines): no batch
    /// takes records from both sides of it.
    BatchEnd,
}

/// A source's bounded queue to the batcher: every delivery also wakes the
/// pipeline's driver, so it never polls for input.
#[derive(Debug, Clone)]
pub struct ChunkQueue {
    deliveries: mpsc::Sender<Delivery>,
    driver: crate::pipeline::Signal,
    pace: Option<Pace>,
}

/// The token bucket a paced queue waits for, and the stop that lifts it.
#[derive(Debug, Clone)]
struct Pace {
    limiter: Arc<rate::RateLimiter>,
    stop: watch::Receiver<bool>,
}

impl ChunkQueue {
    /// A queue sending into `deliveries` and waking `driver`.
    pub fn new(deliveries: mpsc::Sender<Delivery>, driver: crate::pipeline::Signal) -> Self {
        Self {
            deliveries,
            driver,
            pace: None,
        }
    }

    /// The same queue, taking chunks no faster than `limiter` allows until
    /// `stop` becomes `true` (a stopping pipeline takes what its receivers
    /// hold at once).
    pub fn paced(mut self, limiter: Arc<rate::RateLimiter>, stop: watch::Receiver<bool>) -> Self {
        self.pace = Some(Pace { limiter, stop });
        self
    }

    /// Records a chunk should hold at most: `chunk_records`, or fewer when
    /// the source's rate is low ([`rate::RateLimiter::chunk_limit`]).
    pub fn chunk_limit(&self, chunk_records: usize) -> usize {
        self.pace.as_ref().map_or(chunk_records, |pace| {
            pace.limiter.chunk_limit().min(chunk_records)
        })
    }

    /// Sends `delivery`, first waiting for the source's rate (when paced),
    /// then while the queue is full (backpressure).
    pub async fn send(&self, delivery: Delivery) -> Result<(), Closed> {
        if let (Some(pace), Delivery::Chunk(chunk, _)) = (&self.pace, &delivery)
            && let Some(at) = pace.limiter.reserve(chunk.len(), std::time::Instant::now())
            && !*pace.stop.borrow()
        {
            let mut stop = pace.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        }
        self.deliveries.send(delivery).await.map_err(|_| Closed)?;
        self.driver.notify();
        Ok(())
    }
}

/// Batch times under deterministic time: batch `k` is at
/// `start + (k + 1) * interval`, whatever the wall clock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeterministicClock {
    /// Milliseconds since the Unix epoch at which batch 0 starts.
    pub start_ms: i64,
    /// The batch interval in milliseconds.
    pub interval_ms: i64,
}

impl DeterministicClock {
    /// The time of batch `batch_id`: the end of its interval.
    pub fn time_of(&self, batch_id: u64) -> i64 {
        self.start_ms + (batch_id as i64 + 1) * self.interval_ms
    }
}

/// What a running source gets from the engine.
pub struct SourceContext {
    /// The pipeline's name.
    pub pipeline: String,
    /// The source's stream name.
    pub name: String,
    /// Where chunks go; bounded.
    pub chunks: ChunkQueue,
    /// Becomes `true` when the pipeline stops.
    pub stop: watch::Receiver<bool>,
    /// Read what is available now, then return (instead of waiting for more).
    pub available_now: bool,
    /// Records per chunk.
    pub chunk_records: usize,
    /// Set under deterministic time: records of the source's unit `k` are
    /// stamped with the time of batch `k` instead of the wall clock.
    pub clock: Option<DeterministicClock>,
    /// After a restart: what to read again first, and where to go on from.
    pub replay: Option<Replay>,
    /// For receivers that cannot rewind: their write-ahead log's directory
    /// and sync policy (set when the pipeline checkpoints).
    pub wal: Option<(wal::WalLocation, wal::WalSync)>,
    /// The source's position after the last batch whose sinks committed
    /// (for sources that report it back, such as Kafka's consumer-group
    /// offsets); `None` before the first.
    pub committed: watch::Receiver<Option<SourcePosition>>,
    /// Where a partitioned source publishes its partitions' lag.
    pub lag: lag::LagBoard,
}

impl SourceContext {
    /// A chunker sending into this context's queue.
    pub fn chunker(&self) -> LineChunker {
        LineChunker::new(self.chunks.clone(), self.chunk_records)
    }

    /// True once the pipeline asked sources to stop.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits until the pipeline asks sources to stop.
    pub async fn stopped(&mut self) {
        let _ = self.stop.wait_for(|stop| *stop).await;
    }

    /// A copy of this context for a sub-task of the receiver (one connection).
    pub fn clone_for_task(&self) -> Self {
        Self {
            pipeline: self.pipeline.clone(),
            name: self.name.clone(),
            chunks: self.chunks.clone(),
            stop: self.stop.clone(),
            available_now: self.available_now,
            chunk_records: self.chunk_records,
            clock: self.clock,
            replay: None,
            wal: None,
            committed: self.committed.clone(),
            lag: self.lag.clone(),
        }
    }

    /// The timestamp of records of unit `unit` (a file, a batch of
    /// generator lines): the wall clock, or the time of batch `unit` under
    /// deterministic time.
    pub fn timestamp(&self, unit: u64) -> i64 {
        match self.clock {
            Some(clock) => clock.time_of(unit),
            None => now_ms(),
        }
    }

    /// Marks the end of one unit of a source with a fixed batch size.
    pub async fn end_batch(&self) -> Result<(), Closed> {
        self.chunks.send(Delivery::BatchEnd).await
    }

    /// An error of this source.
    pub fn error(&self, message: impl Into<String>) -> SourceError {
        SourceError {
            source_name: self.name.clone(),
            message: message.into(),
        }
    }
}

/// The pipeline is gone: nobody takes chunks any more.
#[derive(Debug, Clone, Copy)]
pub struct Closed;

/// Turns how much input a chunker has consumed (complete lines, their bytes
/// with line ends) into the source's position.
pub type PositionOf = Box<dyn Fn(u64, u64) -> SourcePosition + Send + Sync>;

/// Collects lines into chunks and sends them to the batcher, each with the
/// source's position after it.
pub struct LineChunker {
    chunks: ChunkQueue,
    chunk_records: usize,
    current: Batch,
    partial: Vec<u8>,
    lines: u64,
    bytes: u64,
    position_of: Option<PositionOf>,
}

/// Bytes after which a chunk is sent even if it has fewer records.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

impl LineChunker {
    fn new(chunks: ChunkQueue, chunk_records: usize) -> Self {
        Self {
            chunks,
            chunk_records,
            current: Batch::new(),
            partial: Vec::new(),
            lines: 0,
            bytes: 0,
            position_of: None,
        }
    }

    /// Reports positions through `position_of(lines, bytes)`, counting from
    /// `lines` lines and `bytes` bytes already consumed.
    pub fn track(&mut self, lines: u64, bytes: u64, position_of: PositionOf) {
        self.lines = lines;
        self.bytes = bytes;
        self.position_of = Some(position_of);
    }

    /// Adds one record (a line without its end-of-line), sending the chunk
    /// when it is full.
    pub async fn push(&mut self, value: &[u8], timestamp: i64) -> Result<(), Closed> {
        self.current.push(None, value, timestamp);
        self.lines += 1;
        self.bytes += value.len() as u64 + 1;
        if self.full() {
            self.flush().await?;
        }
        Ok(())
    }

    /// True when the chunk is full: `chunk-records` records (fewer for a
    /// paced source at a low rate), or [`CHUNK_BYTES`].
    fn full(&self) -> bool {
        self.current.len() >= self.chunks.chunk_limit(self.chunk_records)
            || self.current.data_bytes() >= CHUNK_BYTES
    }

    /// Adds the complete lines of `bytes`; a trailing incomplete line waits
    /// for the next call (or [`LineChunker::finish_lines`]). `\r\n` ends a
    /// line like `\n`.
    pub async fn push_bytes(&mut self, bytes: &[u8], timestamp: i64) -> Result<(), Closed> {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', bytes) {
            if self.partial.is_empty() {
                let line = trim_cr(&bytes[start..end]);
                self.current.push(None, line, timestamp);
            } else {
                self.partial.extend_from_slice(&bytes[start..end]);
                let line = std::mem::take(&mut self.partial);
                self.bytes += (line.len() - (end - start)) as u64;
                self.current.push(None, trim_cr(&line), timestamp);
            }
            self.lines += 1;
            self.bytes += (end - start + 1) as u64;
            start = end + 1;
            if self.full() {
                self.flush().await?;
            }
        }
        self.partial.extend_from_slice(&bytes[start..]);
        Ok(())
    }

    /// Emits a pending incomplete line (at the end of a file or connection).
    pub async fn finish_lines(&mut self, timestamp: i64) -> Result<(), Closed> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.lines += 1;
            self.bytes += line.len() as u64;
            self.current.push(None, trim_cr(&line), timestamp);
        }
        self.flush().await
    }

    /// Sends an empty chunk that only carries the position, when positions
    /// are tracked: a file without a line still counts as read (its batch
    /// log entry names it, so a restart does not count it again).
    pub async fn mark_position(&mut self) -> Result<(), Closed> {
        self.flush().await?;
        let Some(position) = self.position_of.as_ref().map(|at| at(self.lines, self.bytes)) else {
            return Ok(());
        };
        self.chunks
            .send(Delivery::Chunk(Batch::new(), Some(position)))
            .await
    }

    /// Sends the records collected so far, waiting while the queue is full.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        if self.current.is_empty() {
            return Ok(());
        }
        // The next chunk is sized like this one (plus an eighth): growing
        // it by doubling left up to half of every queued chunk unused.
        let next = Batch::with_capacity(
            self.current.len(),
            (self.current.data_bytes() + self.current.data_bytes() / 8).min(CHUNK_BYTES + 4096),
        );
        let chunk = std::mem::replace(&mut self.current, next);
        let position = self.position_of.as_ref().map(|at| at(self.lines, self.bytes));
        self.chunks.send(Delivery::Chunk(chunk, position)).await
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The consumer group of a source that reads through one: `explicit`, or
/// `weir.<pipeline>.<source>`, after the scope's prefix (a tenant's).
pub fn group_id(explicit: Option<&str>, ids_prefix: Option<&str>, pipeline: &str, source: &str) -> String {
    let group = explicit.map_or_else(|| format!("weir.{pipeline}.{source}"), str::to_owned);
    format!("{}{group}", ids_prefix.unwrap_or_default())
}

/// A receiver.
#[async_trait::async_trait]
pub trait Source: Send {
    /// Reads until exhausted (available-now) or stopped, sending chunks
    /// through `ctx`. Returning `Ok` means the source has nothing more.
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError>;
}

/// Every kind of source, in the order errors list them. A new kind is a
/// module here and one line in this list.
pub const TYPES: &[SourceEntry] = &[
    SourceEntry::of::<socket::SocketSpec>(),
    SourceEntry::of::<files::FilesSpec>(),
    SourceEntry::of::<generator::GeneratorSpec>(),
    SourceEntry::of::<stdin::StdinSource>(),
    #[cfg(feature = "kafka")]
    SourceEntry::of::<kafka::KafkaSpec>(),
    SourceEntry::of::<redis_stream::RedisStreamSpec>(),
    SourceEntry::of::<zeromq::ZeromqSpec>(),
];

/// The receiver for a source spec.
pub fn from_spec(spec: &SourceSpec) -> Box<dyn Source> {
    spec.kind.build()
}
