//! The Redis sink (`type = "redis"`): one command per record (`SET`,
//! `INCRBY`, `HSET`, `XADD` or `PUBLISH`), a batch applied in one
//! `MULTI`/`EXEC` together with the sink's **marker**, a key holding the last
//! batch id applied.
//!
//! In a pipeline that checkpoints, the marker makes the sink exactly-once:
//! before a batch, the sink `WATCH`es the marker and skips the batch if the
//! marker is already at or past it (a batch re-run after a crash, whose
//! `EXEC` had gone through); the `EXEC` fails if anyone moved the marker
//! meanwhile (a zombie of the same pipeline), and the batch is tried again.
//! Without a checkpoint, batch ids start again at 0 on every run, so the
//! marker is not used and delivery is at least once (`INCRBY` then counts a
//! re-run batch twice).
//!
//! Keys, fields and channels are templates ([`super::template`]) over the
//! record: `{key}`, `{value}`, `{pipeline}`, `{sink}`, `{batch}`. A connection that fails is
//! retried with backoff (100 ms doubling to 5 s) for up to `timeout`, then
//! the batch fails with the address and the last error; an error Redis
//! answers (a wrong type, say) fails it at once.

use std::time::{Duration, Instant};

use super::template::{Field, Template, Values};
use super::{BatchInfo, Sink, SinkContext, SinkError};
use crate::config::{Key, KindContext, Reach, Settings, SinkConfig, SinkSpec, SinkType, SpecError};
use crate::failpoint::crash_point;
use crate::record::Partition;
use crate::redis_client::{CLIENT_KEYS, RedisClient, transient};

/// What each record becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisCommand {
    /// `SET key value`.
    Set,
    /// `INCRBY key value` (the value an integer).
    IncrBy,
    /// `HSET key field value`.
    HSet,
    /// `XADD key * key <record key> value <value>`.
    XAdd,
    /// `PUBLISH key value`.
    Publish,
}

const COMMANDS: [(&str, RedisCommand); 5] = [
    ("set", RedisCommand::Set),
    ("incrby", RedisCommand::IncrBy),
    ("hset", RedisCommand::HSet),
    ("xadd", RedisCommand::XAdd),
    ("publish", RedisCommand::Publish),
];

/// The placeholders the Redis sink's templates take.
const FIELDS: [Field; 5] = [
    Field::Key,
    Field::Value,
    Field::Pipeline,
    Field::Sink,
    Field::Batch,
];

/// Settings of the Redis sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSinkSpec {
    /// The server and the login to it.
    pub client: RedisClient,
    /// What each record becomes.
    pub command: RedisCommand,
    /// The Redis key (for `PUBLISH`, the channel).
    pub key: Template,
    /// The hash field of `HSET`.
    pub field: Template,
    /// The marker key; `None`: `weir:<prefix><pipeline>:<sink>:last-batch`.
    pub marker: Option<String>,
    /// What scoped ids start with (a tenant's prefix).
    pub ids_prefix: Option<String>,
    /// How long a batch may retry a failing connection.
    pub timeout: Duration,
}

impl SinkType for RedisSinkSpec {
    const NAME: &'static str = "redis";
    const KEYS: &'static [Key] = &[
        CLIENT_KEYS[0],
        CLIENT_KEYS[1],
        CLIENT_KEYS[2],
        CLIENT_KEYS[3],
        Key::text("command"),
        Key::text("key"),
        Key::text("field"),
        Key::text("marker-key"),
        Key::text("timeout"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let client = RedisClient::parse(settings, cx.offset, "a `redis` sink")?;
        let command = match settings.text("command") {
            None => RedisCommand::Set,
            Some(text) => COMMANDS
                .iter()
                .find(|(name, _)| name == text.get_ref())
                .map(|(_, command)| *command)
                .ok_or_else(|| {
                    (
                        text.span().start,
                        format!(
                            "unknown command `{}` (expected set, incrby, hset, xadd or publish)",
                            text.get_ref()
                        ),
                    )
                })?,
        };
        let template = |key: &str, default: Option<&str>| -> Result<Template, SpecError> {
            match (settings.text(key), default) {
                (Some(text), _) => {
                    Template::parse(text.get_ref(), &FIELDS).map_err(|e| (text.span().start, e))
                }
                (None, Some(default)) => Ok(Template::parse(default, &FIELDS).expect("a valid default")),
                (None, None) => Err((
                    cx.offset,
                    format!(
                        "a `redis` sink with `command = \"{}\"` needs `{key}`",
                        command_name(command)
                    ),
                )),
            }
        };
        let key = match command {
            RedisCommand::Set | RedisCommand::IncrBy => template("key", Some("{key}"))?,
            RedisCommand::HSet | RedisCommand::XAdd | RedisCommand::Publish => template("key", None)?,
        };
        let field = template("field", Some("{key}"))?;
        Ok(Self {
            client,
            command,
            key,
            field,
            marker: settings.text("marker-key").map(|t| t.get_ref().clone()),
            ids_prefix: cx.ids_prefix.map(str::to_owned),
            timeout: match settings.text("timeout") {
                Some(text) => crate::config::duration(text)?,
                None => Duration::from_secs(60),
            },
        })
    }
}

fn command_name(command: RedisCommand) -> &'static str {
    COMMANDS
        .iter()
        .find(|(_, c)| *c == command)
        .map_or("?", |(name, _)| name)
}

impl SinkConfig for RedisSinkSpec {
    fn reach(&self) -> Reach {
        Reach::Network(vec![self.client.address.clone()])
    }

    fn build(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Box<dyn Sink> {
        let marker = self.marker.clone().unwrap_or_else(|| {
            format!(
                "weir:{}{}:{}:last-batch",
                self.ids_prefix.as_deref().unwrap_or_default(),
                cx.pipeline,
                spec.name
            )
        });
        Box::new(RedisSink {
            spec: self.clone(),
            name: spec.name.clone(),
            pipeline: cx.pipeline.to_owned(),
            marker: cx.checkpointed.then_some(marker),
            connection: None,
            unchecked: None,
        })
    }
}

/// Writes batches to Redis.
pub struct RedisSink {
    spec: RedisSinkSpec,
    name: String,
    pipeline: String,
    /// The marker key, in a pipeline that checkpoints.
    marker: Option<String>,
    connection: Option<redis::Connection>,
    /// The end of the batch log, while the marker has not been checked
    /// against it yet (Redis was unreachable at start).
    unchecked: Option<u64>,
}

/// Whether retrying may help: the connection, not Redis's answer, failed.
enum Attempt {
    Written,
    /// The marker says the batch is in Redis already.
    Skipped,
    /// The marker moved under the `WATCH`: try again.
    Raced,
}

impl RedisSink {
    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
            superseded: false,
        }
    }

    fn connect(&mut self) -> Result<&mut redis::Connection, redis::RedisError> {
        if self.connection.is_none() {
            self.connection = Some(self.spec.client.connect(self.spec.timeout)?);
        }
        Ok(self.connection.as_mut().expect("just connected"))
    }

    /// The marker's value: the last batch applied.
    fn last_applied(&mut self) -> Result<Option<u64>, redis::RedisError> {
        let Some(marker) = self.marker.clone() else {
            return Ok(None);
        };
        let value: Option<u64> = redis::cmd("GET").arg(&marker).query(self.connect()?)?;
        Ok(value)
    }

    /// One try at writing `partitions` as batch `batch`.
    fn apply(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<Attempt, redis::RedisError> {
        let marker = self.marker.clone();
        if let Some(marker) = &marker {
            redis::cmd("WATCH").arg(marker).query::<()>(self.connect()?)?;
            let last: Option<u64> = redis::cmd("GET").arg(marker).query(self.connect()?)?;
            if last.is_some_and(|last| last >= batch.id) {
                redis::cmd("UNWATCH").query::<()>(self.connect()?)?;
                return Ok(Attempt::Skipped);
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let (mut key, mut field) = (Vec::new(), Vec::new());
        for record in partitions.iter().flatten().flat_map(crate::record::Batch::iter) {
            let record_key = record.key.unwrap_or_default();
            let values = Values {
                pipeline: &self.pipeline,
                sink: &self.name,
                batch: batch.id,
                batch_time_ms: batch.time_ms,
                key: record_key,
                value: record.value,
                window_start: None,
            };
            self.spec.key.render(&mut key, &values);
            match self.spec.command {
                RedisCommand::Set => {
                    pipe.cmd("SET").arg(&key).arg(record.value).ignore();
                }
                RedisCommand::IncrBy => {
                    let by = std::str::from_utf8(record.value)
                        .ok()
                        .and_then(|text| text.trim().parse::<i64>().ok())
                        .ok_or_else(|| {
                            redis::RedisError::from((
                                redis::ErrorKind::TypeError,
                                "not an integer",
                                format!(
                                    "INCRBY needs an integer value; the record of key {:?} has {:?}",
                                    String::from_utf8_lossy(record_key),
                                    String::from_utf8_lossy(record.value)
                                ),
                            ))
                        })?;
                    pipe.cmd("INCRBY").arg(&key).arg(by).ignore();
                }
                RedisCommand::HSet => {
                    self.spec.field.render(&mut field, &values);
                    pipe.cmd("HSET").arg(&key).arg(&field).arg(record.value).ignore();
                }
                RedisCommand::XAdd => {
                    pipe.cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("key")
                        .arg(record_key)
                        .arg("value")
                        .arg(record.value)
                        .ignore();
                }
                RedisCommand::Publish => {
                    pipe.cmd("PUBLISH").arg(&key).arg(record.value).ignore();
                }
            }
        }
        if let Some(marker) = &marker {
            pipe.cmd("SET").arg(marker).arg(batch.id).ignore();
        }
        crash_point("redis-prepared");
        // With a WATCH, an aborted EXEC answers nil.
        let applied: Option<()> = pipe.query(self.connect()?)?;
        crash_point("redis-committed");
        Ok(if applied.is_some() {
            Attempt::Written
        } else {
            Attempt::Raced
        })
    }
}

impl RedisSink {
    /// Refuses a marker past the batch log's end `logged_end`: it was set
    /// by another checkpoint directory or pipeline, and trusting it would
    /// skip this run's batches.
    fn check_marker(&mut self, logged_end: u64) -> Result<(), redis::RedisError> {
        let last = self.last_applied()?;
        if let (Some(last), Some(marker)) = (last, &self.marker)
            && last >= logged_end
        {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ClientError,
                "marker past the batch log",
                format!(
                    "marker `{marker}` says batch {last} was written, but this pipeline's batch log \
                     ends before batch {logged_end}: another checkpoint directory or pipeline writes with the same marker. \
                     Restore the checkpoint directory, delete the key, or set `marker-key`"
                ),
            )));
        }
        self.unchecked = None;
        Ok(())
    }
}

impl Sink for RedisSink {
    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        let deadline = Instant::now() + self.spec.timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = match self.unchecked {
                Some(logged_end) => self
                    .check_marker(logged_end)
                    .and_then(|()| self.apply(batch, partitions)),
                None => self.apply(batch, partitions),
            };
            match attempt {
                Ok(Attempt::Written) => return Ok(()),
                Ok(Attempt::Skipped) => {
                    tracing::info!(sink = %self.name, batch = batch.id, "batch already in Redis (its marker says so): skipped");
                    return Ok(());
                }
                Ok(Attempt::Raced) if Instant::now() < deadline => {
                    tracing::warn!(sink = %self.name, batch = batch.id, "the marker moved during the batch: trying again");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(Attempt::Raced) => {
                    return Err(self.error(format!(
                        "batch {}: its marker kept moving for {} (another writer uses it: set `marker-key`)",
                        batch.id,
                        humantime::format_duration(self.spec.timeout)
                    )));
                }
                Err(error) if transient(&error) && Instant::now() < deadline => {
                    tracing::warn!(sink = %self.name, address = %self.spec.client.address, %error, ?backoff, "Redis unreachable: retrying");
                    self.connection = None;
                    std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    self.connection = None;
                    let waited = if transient(&error) {
                        format!(" (retried for {})", humantime::format_duration(self.spec.timeout))
                    } else {
                        String::new()
                    };
                    // Redis runs the rest of a transaction whose command it
                    // refused (a wrong type, an overflow): the marker moved.
                    let refused_inside = !transient(&error)
                        && self.marker.is_some()
                        && !matches!(
                            error.kind(),
                            redis::ErrorKind::TypeError | redis::ErrorKind::ClientError
                        );
                    let applied = if refused_inside {
                        " (Redis does not roll a transaction back: the batch's other commands may have run and \
                         moved its marker, so a restart skips it; fix the refused key, then replay the batch)"
                    } else {
                        ""
                    };
                    return Err(self.error(format!(
                        "Redis at {} failed batch {}{waited}: {error}{applied}",
                        self.spec.client.address, batch.id
                    )));
                }
            }
        }
    }

    fn recovered(&mut self, logged_end: u64) -> Result<(), SinkError> {
        self.unchecked = Some(logged_end);
        match self.check_marker(logged_end) {
            Ok(()) => Ok(()),
            // Unreachable now: the first batch checks before it writes.
            Err(error) if transient(&error) => {
                self.connection = None;
                Ok(())
            }
            Err(error) => Err(self.error(format!("Redis at {}: {error}", self.spec.client.address))),
        }
    }
}
