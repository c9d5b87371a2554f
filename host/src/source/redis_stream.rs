//! Entries of Redis streams (`type = "redis-stream"`), read through a
//! consumer group with `XREADGROUP` and acknowledged with `XACK` once the
//! batch that holds them has committed.
//!
//! - **Records**: one per stream entry. The value is the entry's
//!   `value-field` (`value` by default), the key its `key-field` (`key`; no
//!   key when the entry has none), the timestamp the entry id's time (when
//!   Redis added it). An entry without the value field becomes the JSON
//!   object of all its fields, so nothing is dropped. This is the shape the
//!   Redis sink's `xadd` writes.
//! - **Exactly once with a checkpoint**: every chunk carries the id of the
//!   last entry read of every stream and how many entries were read, so the
//!   batch log holds each batch's id range per stream
//!   ([`BatchInput::RedisStream`]); after a crash the receiver reads those
//!   ranges again with `XRANGE` (the count tells whether anything was
//!   trimmed meanwhile: then it fails rather than lose records), then its
//!   own pending entries after them, then new ones. The group is the
//!   pipeline's cursor, so a checkpointed pipeline must be the only consumer
//!   of its group.
//! - **At least once without one**: entries stay pending in the group until
//!   their batch committed; a restart reads the consumer's pending entries
//!   again first.
//! - **Where a new group starts**: `start` = `latest` (default, only new
//!   entries) or `earliest`; an existing group goes on where it is. The
//!   stream is created (`MKSTREAM`) when missing, so a pipeline can start
//!   before its producers.
//! - **Failures**: a connection that fails is retried with backoff (100 ms
//!   doubling to 5 s); when the server has not answered for `give-up-after`
//!   (5 minutes) the source fails, and the pipeline with it. A group deleted
//!   while running is created again where the source stands. A key that is
//!   not a stream fails the source at once, naming it.
//! - **`--available-now`** reads each stream up to the last entry it had
//!   when the source started, waits for the last batch to commit and
//!   acknowledges it.
//!
//! The receiver runs on a blocking thread with a blocking connection
//! (`XREADGROUP ... BLOCK 100`), checking between reads whether the
//! pipeline stops.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use redis::Value;
use tokio::runtime::Handle;

use super::{BatchInput, Closed, Delivery, Source, SourceContext, SourceError, SourcePosition, StreamCursor};
use crate::config::{Key, KindContext, Reach, Settings, SourceConfig, SourceType, SpecError, duration};
use crate::failpoint::crash_point;
use crate::record::Batch;
use crate::redis_client::{CLIENT_KEYS, RedisClient, transient};

/// How long one `XREADGROUP` waits for new entries.
const READ_BLOCK_MS: u64 = 100;
/// How long a command may take before the connection counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries `XRANGE` and `XPENDING` return per call.
const PAGE: usize = 1000;
/// How long an ending source waits for its last batch to commit.
const LAST_COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Where a group the source creates starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupStart {
    /// At the stream's first entry.
    Earliest,
    /// After its last entry: only entries added from now on.
    #[default]
    Latest,
}

/// Settings of the Redis Streams source (`type = "redis-stream"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStreamSpec {
    /// The server and the login to it.
    pub client: RedisClient,
    /// The stream keys read, sorted.
    pub streams: Vec<String>,
    /// The consumer group (`None`: `weir.<prefix><pipeline>.<source>`).
    pub group: Option<String>,
    /// The consumer's name in the group.
    pub consumer: String,
    /// What derived ids start with (a tenant's prefix).
    pub ids_prefix: Option<String>,
    /// Where a group the source creates starts.
    pub start: GroupStart,
    /// The entry field that holds a record's value.
    pub value_field: String,
    /// The entry field that holds a record's key.
    pub key_field: String,
    /// How long the server may stay unreachable before the source fails.
    pub give_up_after: Duration,
}

impl SourceType for RedisStreamSpec {
    const NAME: &'static str = "redis-stream";
    const KEYS: &'static [Key] = &[
        CLIENT_KEYS[0],
        CLIENT_KEYS[1],
        CLIENT_KEYS[2],
        CLIENT_KEYS[3],
        Key::any("streams"),
        Key::text("group"),
        Key::text("consumer"),
        Key::any("start"),
        Key::text("value-field"),
        Key::text("key-field"),
        Key::text("give-up-after"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let what = "a `redis-stream` source";
        let client = RedisClient::parse(settings, cx.offset, what)?;
        let streams = stream_keys(settings.any("streams"), cx.offset)?;
        let nonempty = |key: &str, default: &str| -> Result<String, SpecError> {
            match settings.text(key) {
                Some(text) if text.get_ref().is_empty() => {
                    Err((text.span().start, format!("`{key}` is empty")))
                }
                Some(text) => Ok(text.get_ref().clone()),
                None => Ok(default.to_owned()),
            }
        };
        let start = match settings.any("start") {
            None => GroupStart::Latest,
            Some(value) => match value.get_ref().as_str() {
                Some("earliest") => GroupStart::Earliest,
                Some("latest") => GroupStart::Latest,
                _ => {
                    return Err((
                        value.span().start,
                        format!(
                            "`start` must be \"earliest\" or \"latest\", not {}",
                            value.get_ref()
                        ),
                    ));
                }
            },
        };
        Ok(Self {
            client,
            streams,
            group: settings
                .text("group")
                .map(|_| nonempty("group", ""))
                .transpose()?,
            consumer: nonempty("consumer", "weir")?,
            ids_prefix: cx.ids_prefix.map(str::to_owned),
            start,
            value_field: nonempty("value-field", "value")?,
            key_field: nonempty("key-field", "key")?,
            give_up_after: match settings.text("give-up-after") {
                Some(text) => duration(text)?,
                None => Duration::from_secs(300),
            },
        })
    }
}

/// `streams = "a"` or `streams = ["a", "b"]`, sorted and without repeats.
fn stream_keys(value: Option<&toml::Spanned<toml::Value>>, offset: usize) -> Result<Vec<String>, SpecError> {
    let expected = "`streams` must be a stream key or a list of stream keys";
    let Some(value) = value else {
        return Err((
            offset,
            "a `redis-stream` source needs `streams` (a stream key or a list of them)".to_owned(),
        ));
    };
    let at = value.span().start;
    let mut keys = crate::config::one_or_many(value, expected)?;
    if keys.is_empty() || keys.iter().any(String::is_empty) {
        return Err((at, "`streams` holds no key, or an empty one".to_owned()));
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

impl RedisStreamSpec {
    /// The consumer group: `group`, or `weir.<pipeline>.<source>`, after
    /// the scope's prefix (a tenant's).
    pub fn group(&self, pipeline: &str, source: &str) -> String {
        super::group_id(
            self.group.as_deref(),
            self.ids_prefix.as_deref(),
            pipeline,
            source,
        )
    }
}

impl SourceConfig for RedisStreamSpec {
    fn build(&self) -> Box<dyn Source> {
        Box::new(RedisStreamSource { spec: self.clone() })
    }

    fn reach(&self) -> Reach {
        Reach::Network(vec![self.client.address.clone()])
    }
}

/// A Redis Streams receiver.
pub struct RedisStreamSource {
    spec: RedisStreamSpec,
}

#[async_trait::async_trait]
impl Source for RedisStreamSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let handle = Handle::current();
        let name = ctx.name.clone();
        let spec = self.spec;
        match tokio::task::spawn_blocking(move || Receiver::new(spec, ctx, handle).run()).await {
            Ok(outcome) => outcome,
            Err(join) => Err(SourceError {
                source_name: name,
                message: format!("the Redis Streams receiver stopped unexpectedly: {join}"),
            }),
        }
    }
}

/// A stream entry id, `<milliseconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EntryId {
    /// When Redis added the entry, in milliseconds since the Unix epoch.
    pub ms: u64,
    /// The entry's number within that millisecond.
    pub seq: u64,
}

impl FromStr for EntryId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Ok(Self { ms, seq }),
            _ => Err(format!("{text:?} is not a stream entry id")),
        }
    }
}

impl EntryId {
    /// The id just before this one (an exclusive start that takes it).
    pub fn before(self) -> Self {
        match (self.ms, self.seq) {
            (ms, 0) if ms > 0 => Self {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => Self {
                ms,
                seq: seq.saturating_sub(1),
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry of a reply: its id and fields (`None` for an entry still
/// pending in the group but deleted from the stream).
struct Entry {
    id: EntryId,
    fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

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

/// Where the receiver stands in one stream.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// The last entry read.
    last: EntryId,
    /// Entries read since the pipeline's first run.
    read: u64,
    /// `--available-now`: the stream's last entry when the source started.
    stop_at: Option<EntryId>,
    /// Entries up to here are acknowledged.
    acked: EntryId,
}

/// The receiver's state, on its blocking thread.
struct Receiver {
    spec: RedisStreamSpec,
    ctx: SourceContext,
    handle: Handle,
    group: String,
    connection: Option<redis::Connection>,
    /// A connection was made before.
    connected: bool,
    /// The connection was made again since pending entries were last read.
    reconnected: bool,
    cursors: BTreeMap<String, Cursor>,
    chunk: Batch,
    /// When the server last answered.
    last_contact: Instant,
}

impl Receiver {
    fn new(spec: RedisStreamSpec, ctx: SourceContext, handle: Handle) -> Self {
        let group = spec.group(&ctx.pipeline, &ctx.name);
        Self {
            spec,
            ctx,
            handle,
            group,
            connection: None,
            connected: false,
            reconnected: false,
            cursors: BTreeMap::new(),
            chunk: Batch::new(),
            last_contact: Instant::now(),
        }
    }

    fn run(mut self) -> Result<(), SourceError> {
        match self.read() {
            Ok(()) | Err(Halt::Stopped) => Ok(()),
            Err(Halt::Failed(error)) => Err(error),
        }
    }

    fn read(&mut self) -> Result<(), Halt> {
        if let Some(replay) = self.ctx.replay.take() {
            if let Some(SourcePosition::RedisStream { streams }) = &replay.progress.position {
                for known in streams {
                    let last = self.parse_id(&known.id)?;
                    self.cursors.insert(
                        known.stream.clone(),
                        Cursor {
                            last,
                            read: known.read,
                            ..Cursor::default()
                        },
                    );
                }
            }
            for input in &replay.batches {
                self.replay_batch(input)?;
            }
        }
        // Streams the checkpoint and the batch log know go on from there;
        // the others from where this consumer stands in its group.
        let known: BTreeSet<String> = self.cursors.keys().cloned().collect();
        for stream in self.spec.streams.clone() {
            self.cursors.entry(stream).or_default();
        }
        self.create_groups(&known)?;
        for stream in self.spec.streams.clone() {
            if !known.contains(&stream) {
                let start = self.consumer_start(&stream)?;
                self.cursors.get_mut(&stream).expect("every stream").last = start;
            }
        }
        if self.ctx.available_now {
            for stream in self.spec.streams.clone() {
                let last = self.last_entry(&stream)?;
                self.cursors.get_mut(&stream).expect("every stream").stop_at = Some(last);
            }
        }
        // Announce every stream with where it starts.
        let position = self.position();
        self.send(Delivery::Chunk(Batch::new(), Some(position)))?;
        self.read_pending()?;
        self.read_new()
    }

    /// Creates the group on every stream where it is missing: where the
    /// cursor stands for the streams `at_cursor` names, else at `start`.
    fn create_groups(&mut self, at_cursor: &BTreeSet<String>) -> Result<(), Halt> {
        for stream in self.spec.streams.clone() {
            let at = match self.spec.start {
                _ if at_cursor.contains(&stream) => self.cursors[&stream].last.to_string(),
                GroupStart::Earliest => "0".to_owned(),
                GroupStart::Latest => "$".to_owned(),
            };
            let created = self.command(|connection, group| {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(group)
                    .arg(&at)
                    .arg("MKSTREAM")
                    .query::<()>(connection)
            });
            match created {
                Ok(()) => {
                    tracing::info!(source = %self.ctx.name, %stream, group = %self.group, %at, "created the consumer group")
                }
                Err(Halt::Failed(error)) if error.message.contains("BUSYGROUP") => {}
                Err(halt) => return Err(halt),
            }
        }
        Ok(())
    }

    /// Where this consumer stands in a stream the checkpoint does not know:
    /// just before its oldest pending entry (read before, never
    /// acknowledged: it is read again), else at the group's last delivered
    /// entry.
    fn consumer_start(&mut self, stream: &str) -> Result<EntryId, Halt> {
        let groups: Value =
            self.command(|connection, _| redis::cmd("XINFO").arg("GROUPS").arg(stream).query(connection))?;
        let mut delivered = EntryId::default();
        if let Value::Array(groups) = groups {
            for group in groups {
                let fields = match group {
                    Value::Array(fields) => fields.into_iter().map(bytes_of).collect::<Vec<_>>(),
                    Value::Map(pairs) => pairs
                        .into_iter()
                        .flat_map(|(name, value)| [bytes_of(name), bytes_of(value)])
                        .collect(),
                    _ => continue,
                };
                let field = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|pair| pair[0] == name.as_bytes())
                        .and_then(|pair| pair.get(1))
                };
                if field("name").map(Vec::as_slice) == Some(self.group.as_bytes()) {
                    let id = field("last-delivered-id").map(|id| String::from_utf8_lossy(id).into_owned());
                    delivered = self.parse_id(id.as_deref().unwrap_or("0-0"))?;
                }
            }
        }
        let consumer = self.spec.consumer.clone();
        let oldest: Value = self.command(|connection, group| {
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(&consumer)
                .query(connection)
        })?;
        let oldest = match oldest {
            Value::Array(mut items) if !items.is_empty() => match items.swap_remove(0) {
                Value::Array(mut fields) if !fields.is_empty() => {
                    let id = String::from_utf8_lossy(&bytes_of(fields.swap_remove(0))).into_owned();
                    Some(self.parse_id(&id)?)
                }
                _ => None,
            },
            _ => None,
        };
        Ok(match oldest {
            Some(oldest) => oldest.before().min(delivered),
            None => delivered,
        })
    }

    /// The id of a stream's last entry (`0-0` when it is empty).
    fn last_entry(&mut self, stream: &str) -> Result<EntryId, Halt> {
        let reply: Value = self.command(|connection, _| {
            redis::cmd("XREVRANGE")
                .arg(stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(connection)
        })?;
        let entries = self.entries(reply)?;
        Ok(entries.first().map_or(EntryId::default(), |entry| entry.id))
    }

    /// Reads one logged batch's ranges again, streams in order, and ends
    /// the batch.
    fn replay_batch(&mut self, input: &BatchInput) -> Result<(), Halt> {
        let ranges = match input {
            BatchInput::RedisStream { ranges } => ranges,
            // A batch cut before the source announced its streams held
            // nothing of it.
            BatchInput::Untracked => return self.send(Delivery::BatchEnd),
            other => {
                return Err(self.fail(format!(
                    "the batch log holds {other:?} for this Redis Streams source"
                )));
            }
        };
        // Every entry first: a range that lost entries fails the source
        // before the batch is handed over.
        for range in ranges.iter().filter(|range| range.entries > 0) {
            let mut after = self.parse_id(&range.after)?;
            let through = self.parse_id(&range.through)?;
            let mut found = 0u64;
            loop {
                let reply: Value = self.command(|connection, _| {
                    redis::cmd("XRANGE")
                        .arg(&range.stream)
                        .arg(format!("({after}"))
                        .arg(through.to_string())
                        .arg("COUNT")
                        .arg(PAGE)
                        .query(connection)
                })?;
                let entries = self.entries(reply)?;
                let Some(last) = entries.last().map(|entry| entry.id) else {
                    break;
                };
                found += entries.len() as u64;
                for entry in entries {
                    self.push(entry);
                }
                after = last;
            }
            if found != range.entries {
                return Err(self.fail(format!(
                    "stream `{}` no longer holds the entries of a logged batch: {} of {} after {} through {} \
                     are left (trimmed or deleted); the batch cannot be read again exactly",
                    range.stream, found, range.entries, range.after, range.through
                )));
            }
        }
        // The batch's ranges, from where the cursors stand: the same
        // cumulative counts as when it was first read.
        for range in ranges {
            let after = self.parse_id(&range.after)?;
            self.cursors.entry(range.stream.clone()).or_default().last = after;
        }
        self.send(Delivery::Chunk(Batch::new(), Some(self.position())))?;
        for range in ranges {
            let through = self.parse_id(&range.through)?;
            let cursor = self.cursors.entry(range.stream.clone()).or_default();
            cursor.last = through;
            cursor.read += range.entries;
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.send(Delivery::Chunk(chunk, Some(self.position())))?;
        self.send(Delivery::BatchEnd)
    }

    /// Reads the consumer's pending entries (read before but not
    /// acknowledged), skipping those already in logged batches.
    fn read_pending(&mut self) -> Result<(), Halt> {
        let mut from: BTreeMap<String, EntryId> = self
            .spec
            .streams
            .iter()
            .map(|s| (s.clone(), EntryId::default()))
            .collect();
        while !from.is_empty() {
            let ids: Vec<String> = from.values().map(ToString::to_string).collect();
            let streams: Vec<String> = from.keys().cloned().collect();
            let reply = self.read_group(&streams, &ids, None)?;
            let mut replied: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
            for (stream, entries) in reply {
                replied.insert(stream, entries);
            }
            for stream in streams {
                let entries = replied.remove(&stream).unwrap_or_default();
                let Some(last) = entries.last().map(|entry| entry.id) else {
                    from.remove(&stream);
                    continue;
                };
                from.insert(stream.clone(), last);
                let known = self.cursors[&stream].last;
                for entry in entries.into_iter().filter(|entry| entry.id > known) {
                    if entry.fields.is_none() {
                        tracing::warn!(source = %self.ctx.name, %stream, id = %entry.id,
                            "a pending entry was deleted from the stream before it was read again");
                    }
                    self.take(&stream, entry);
                }
                self.flush_if_full()?;
            }
        }
        self.flush()
    }

    /// Reads new entries until stopped (or, `--available-now`, until every
    /// stream is read up to where it stood at the start).
    fn read_new(&mut self) -> Result<(), Halt> {
        let streams = self.spec.streams.clone();
        let new = vec![">".to_owned(); streams.len()];
        loop {
            if self.ctx.stopping() {
                return self.flush();
            }
            self.acknowledge_committed()?;
            // A reply lost with a failed connection left its entries
            // pending: they are read first.
            if std::mem::take(&mut self.reconnected) {
                self.read_pending()?;
            }
            let block = (!self.ctx.available_now).then_some(READ_BLOCK_MS);
            let reply = self.read_group(&streams, &new, block)?;
            let empty = reply.iter().all(|(_, entries)| entries.is_empty());
            if !empty {
                // Read (pending in the group) but in no chunk yet.
                crash_point("redis-stream-read");
            }
            for (stream, entries) in reply {
                for entry in entries {
                    self.take(&stream, entry);
                }
            }
            self.flush()?;
            if self.ctx.available_now
                && (empty
                    || self
                        .cursors
                        .values()
                        .all(|cursor| cursor.stop_at.is_none_or(|stop| cursor.last >= stop)))
            {
                self.acknowledge_last_batches()?;
                return Ok(());
            }
        }
    }

    /// `XREADGROUP ... STREAMS <streams> <ids>`: per stream, its entries.
    fn read_group(
        &mut self,
        streams: &[String],
        ids: &[String],
        block_ms: Option<u64>,
    ) -> Result<Vec<(String, Vec<Entry>)>, Halt> {
        let count = self.ctx.chunks.chunk_limit(self.ctx.chunk_records).max(1);
        let consumer = self.spec.consumer.clone();
        let reply: Value = loop {
            let outcome = self.command(|connection, group| {
                let mut command = redis::cmd("XREADGROUP");
                command
                    .arg("GROUP")
                    .arg(group)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(count);
                if let Some(ms) = block_ms {
                    command.arg("BLOCK").arg(ms);
                }
                command.arg("STREAMS").arg(streams).arg(ids).query(connection)
            });
            match outcome {
                Err(Halt::Failed(error)) if error.message.contains("NOGROUP") => {
                    tracing::warn!(source = %self.ctx.name, group = %self.group,
                        "the consumer group or its stream was deleted: creating it again where the source stands");
                    let everywhere = self.spec.streams.iter().cloned().collect();
                    self.create_groups(&everywhere)?;
                }
                other => break other?,
            }
        };
        let Value::Array(per_stream) = reply else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(per_stream.len());
        for item in per_stream {
            let Value::Array(mut pair) = item else {
                return Err(self.fail("an XREADGROUP reply of an unexpected shape".to_owned()));
            };
            let (Some(entries), Some(Value::BulkString(key))) = (pair.pop(), pair.pop()) else {
                return Err(self.fail("an XREADGROUP reply of an unexpected shape".to_owned()));
            };
            out.push((String::from_utf8_lossy(&key).into_owned(), self.entries(entries)?));
        }
        Ok(out)
    }

    /// The entries of an `XRANGE`-shaped reply.
    fn entries(&self, reply: Value) -> Result<Vec<Entry>, Halt> {
        let shape = || self.fail("a stream reply of an unexpected shape".to_owned());
        let Value::Array(items) = reply else {
            return match reply {
                Value::Nil => Ok(Vec::new()),
                _ => Err(shape()),
            };
        };
        let mut entries = Vec::with_capacity(items.len());
        for item in items {
            let Value::Array(mut pair) = item else {
                return Err(shape());
            };
            let body = pair.pop();
            let Some(Value::BulkString(id)) = pair.pop() else {
                return Err(shape());
            };
            let id = std::str::from_utf8(&id)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(shape)?;
            let fields = match body {
                Some(Value::Array(values)) => {
                    let mut fields = Vec::with_capacity(values.len() / 2);
                    let mut values = values.into_iter();
                    while let (Some(name), Some(value)) = (values.next(), values.next()) {
                        fields.push((bytes_of(name), bytes_of(value)));
                    }
                    Some(fields)
                }
                _ => None,
            };
            entries.push(Entry { id, fields });
        }
        Ok(entries)
    }

    /// Adds a read entry to the chunk and moves the stream's cursor past it.
    fn take(&mut self, stream: &str, entry: Entry) {
        let cursor = self.cursors.get_mut(stream).expect("every stream has a cursor");
        // Already read (a replica that fell behind delivering again).
        if entry.id <= cursor.last {
            return;
        }
        cursor.last = entry.id;
        if entry.fields.is_some() {
            cursor.read += 1;
            self.push(entry);
        }
    }

    /// Adds an entry's record to the chunk.
    fn push(&mut self, entry: Entry) {
        let Some(fields) = entry.fields else { return };
        let field = |name: &str| fields.iter().find(|(n, _)| n == name.as_bytes()).map(|(_, v)| v);
        let key = field(&self.spec.key_field);
        let timestamp = i64::try_from(entry.id.ms).unwrap_or(i64::MAX);
        match field(&self.spec.value_field) {
            Some(value) => self.chunk.push(key.map(Vec::as_slice), value, timestamp),
            None => {
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(name, value)| {
                        (
                            String::from_utf8_lossy(name).into_owned(),
                            String::from_utf8_lossy(value).into_owned().into(),
                        )
                    })
                    .collect();
                let json = serde_json::Value::Object(object).to_string();
                self.chunk
                    .push(key.map(Vec::as_slice), json.as_bytes(), timestamp);
            }
        }
    }

    /// Acknowledges the entries of batches whose sinks committed.
    fn acknowledge_committed(&mut self) -> Result<(), Halt> {
        let Ok(true) = self.ctx.committed.has_changed() else {
            return Ok(());
        };
        let committed = self.ctx.committed.borrow_and_update().clone();
        if let Some(SourcePosition::RedisStream { streams }) = committed {
            for cursor in streams {
                let through = self.parse_id(&cursor.id)?;
                self.acknowledge(&cursor.stream, through)?;
            }
        }
        Ok(())
    }

    /// `--available-now`: waits (a while) for the last batch to commit, and
    /// acknowledges what it held.
    fn acknowledge_last_batches(&mut self) -> Result<(), Halt> {
        let last = self.position();
        let deadline = Instant::now() + LAST_COMMIT_WAIT;
        let mut committed = self.ctx.committed.clone();
        while Instant::now() < deadline && committed.borrow().as_ref() != Some(&last) {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = self
                .handle
                .block_on(async { tokio::time::timeout(left, committed.changed()).await });
        }
        self.acknowledge_committed()
    }

    /// `XACK`s this consumer's pending entries of `stream` up to `through`.
    fn acknowledge(&mut self, stream: &str, through: EntryId) -> Result<(), Halt> {
        let Some(acked) = self.cursors.get(stream).map(|cursor| cursor.acked) else {
            return Ok(());
        };
        if through <= acked {
            return Ok(());
        }
        let consumer = self.spec.consumer.clone();
        loop {
            let pending = self.command(|connection, group| {
                redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(group)
                    .arg("-")
                    .arg(through.to_string())
                    .arg(PAGE)
                    .arg(&consumer)
                    .query::<Value>(connection)
            });
            let pending = match pending {
                Ok(pending) => pending,
                // The group is gone, and its pending entries with it; the
                // next read creates it again.
                Err(Halt::Failed(error)) if error.message.contains("NOGROUP") => return Ok(()),
                Err(halt) => return Err(halt),
            };
            let ids: Vec<Vec<u8>> = match pending {
                Value::Array(items) => items
                    .into_iter()
                    .filter_map(|item| match item {
                        Value::Array(mut fields) if !fields.is_empty() => {
                            Some(bytes_of(fields.swap_remove(0)))
                        }
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            if ids.is_empty() {
                break;
            }
            let full = ids.len() >= PAGE;
            self.command(|connection, group| {
                redis::cmd("XACK")
                    .arg(stream)
                    .arg(group)
                    .arg(&ids)
                    .query::<i64>(connection)
            })?;
            if !full {
                break;
            }
        }
        if let Some(cursor) = self.cursors.get_mut(stream) {
            cursor.acked = through;
        }
        Ok(())
    }

    /// Runs `command` on the connection, connecting first; a connection
    /// failure is retried with backoff until `give-up-after` has passed
    /// since the server last answered. Any other error fails the source.
    fn command<T>(
        &mut self,
        mut command: impl FnMut(&mut redis::Connection, &str) -> redis::RedisResult<T>,
    ) -> Result<T, Halt> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = match self.connection.as_mut() {
                Some(connection) => command(connection, &self.group),
                None => match self.spec.client.connect(COMMAND_TIMEOUT) {
                    Ok(connection) => {
                        self.reconnected = self.connected;
                        self.connected = true;
                        let connection = self.connection.insert(connection);
                        command(connection, &self.group)
                    }
                    Err(error) => Err(error),
                },
            };
            match outcome {
                Ok(value) => {
                    self.last_contact = Instant::now();
                    return Ok(value);
                }
                Err(error) if transient(&error) => {
                    self.connection = None;
                    let silent = self.last_contact.elapsed();
                    if silent >= self.spec.give_up_after {
                        return Err(self.fail(format!(
                            "Redis at {} has not answered for {} ({error})",
                            self.spec.client.address,
                            humantime::format_duration(Duration::from_secs(silent.as_secs()))
                        )));
                    }
                    tracing::warn!(source = %self.ctx.name, address = %self.spec.client.address, %error, ?backoff,
                        "Redis unreachable: retrying");
                    self.sleep(backoff)?;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    return Err(self.fail(format!("Redis at {}: {error}", self.spec.client.address)));
                }
            }
        }
    }

    fn parse_id(&self, text: &str) -> Result<EntryId, Halt> {
        text.parse().map_err(|message| self.fail(message))
    }

    /// Where every stream stands.
    fn position(&self) -> SourcePosition {
        SourcePosition::RedisStream {
            streams: self
                .cursors
                .iter()
                .map(|(stream, cursor)| StreamCursor {
                    stream: stream.clone(),
                    id: cursor.last.to_string(),
                    read: cursor.read,
                })
                .collect(),
        }
    }

    fn flush_if_full(&mut self) -> Result<(), Halt> {
        if self.chunk.len() >= self.ctx.chunks.chunk_limit(self.ctx.chunk_records)
            || self.chunk.data_bytes() >= super::CHUNK_BYTES
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the chunk with the position after it.
    fn flush(&mut self) -> Result<(), Halt> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        let position = self.position();
        self.send(Delivery::Chunk(chunk, Some(position)))
    }

    fn send(&self, delivery: Delivery) -> Result<(), Halt> {
        self.handle
            .block_on(self.ctx.chunks.send(delivery))
            .map_err(Halt::from)
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

    fn fail(&self, message: String) -> Halt {
        Halt::Failed(self.ctx.error(message))
    }
}

/// The bytes of a bulk or simple string reply.
fn bytes_of(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(text) => text.into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_order_and_print() {
        let a: EntryId = "1700000000000-5".parse().unwrap();
        let b: EntryId = "1700000000001-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-5");
        assert_eq!("7".parse::<EntryId>().unwrap(), EntryId { ms: 7, seq: 0 });
        assert!("x-1".parse::<EntryId>().is_err());
        assert_eq!(b.before().to_string(), format!("1700000000000-{}", u64::MAX));
        assert_eq!(a.before().to_string(), "1700000000000-4");
    }
}
