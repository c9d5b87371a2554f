//! Delivery reports of the Kafka sink's producers, kept per **writer**.
//!
//! A producer may carry the records of several writers at once: the
//! process-wide transactional producer of a cluster member carries every
//! task's ([`super::shared`]). Each record is sent with its writer's number
//! as the delivery opaque, so a record the broker refuses is charged to the
//! writer that sent it (one task's bad record fails that task's batch, not
//! its neighbours'), and each writer can wait for its own records alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::kafka::{LogContext, describe};

/// The bytes of a rejected record's value a dead letter keeps.
const DEAD_LETTER_VALUE_BYTES: usize = 1024;

/// The writer number of a producer's only writer (a sink's own producer):
/// its records are not counted one by one (nobody else's share the
/// producer, so a flush of the producer waits for them), and a delivered
/// one costs no lock.
pub(super) const SOLE_WRITER: usize = 0;

/// A record the broker or client refused.
#[derive(Debug, Clone)]
pub(super) struct Rejected {
    pub(super) error: String,
    /// True when the record itself is at fault (too large, invalid), so a
    /// dead letter is the right place for it; false for failures such as
    /// a timeout.
    pub(super) record_at_fault: bool,
    /// True when the producer was fenced: another run took its
    /// transactional id over.
    pub(super) fenced: bool,
    /// True when a delivery report refused it (after it was sent), false
    /// when the client refused it at once. In a transaction, a refused
    /// delivery dooms the transaction.
    pub(super) reported: bool,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value_head: Vec<u8>,
    pub(super) size: usize,
}

impl Rejected {
    fn new(error: &KafkaError, key: Option<&[u8]>, payload: &[u8], reported: bool) -> Self {
        Rejected {
            reported,
            error: describe(error),
            record_at_fault: record_at_fault(error),
            fenced: super::fenced(error),
            key: key.map(<[u8]>::to_vec),
            value_head: payload[..payload.len().min(DEAD_LETTER_VALUE_BYTES)].to_vec(),
            size: payload.len(),
        }
    }
}

/// One writer's records in flight and refused.
#[derive(Debug, Default)]
struct Ledger {
    /// Sent and not yet reported.
    outstanding: u64,
    rejected: Vec<Rejected>,
}

/// The ledgers of a producer's writers, by writer number.
#[derive(Debug, Default)]
pub(super) struct Ledgers(Mutex<HashMap<usize, Ledger>>);

impl Ledgers {
    fn with<T>(&self, writer: usize, f: impl FnOnce(&mut Ledger) -> T) -> T {
        f(self.0.lock().expect("not poisoned").entry(writer).or_default())
    }

    /// Takes the records refused for `writer` so far.
    pub(super) fn take_rejected(&self, writer: usize) -> Vec<Rejected> {
        self.with(writer, |ledger| std::mem::take(&mut ledger.rejected))
    }

    /// Forgets `writer` (it writes no more).
    pub(super) fn forget(&self, writer: usize) {
        self.0.lock().expect("not poisoned").remove(&writer);
    }

    fn outstanding(&self, writer: usize) -> u64 {
        self.with(writer, |ledger| ledger.outstanding)
    }
}

/// Logs the client's messages and keeps delivery reports in [`Ledgers`].
#[derive(Clone)]
pub(super) struct DeliveryContext {
    pub(super) log: LogContext,
    pub(super) ledgers: Arc<Ledgers>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, writer: usize) {
        let rejected = match result {
            Ok(_) if writer == SOLE_WRITER => return,
            Ok(_) => None,
            Err((error, message)) => Some(Rejected::new(
                error,
                message.key(),
                message.payload().unwrap_or_default(),
                true,
            )),
        };
        let mut ledgers = self.ledgers.0.lock().expect("not poisoned");
        let ledger = if writer == SOLE_WRITER {
            ledgers.entry(writer).or_default()
        } else {
            // A writer forgotten meanwhile (it gave up) hears nothing more.
            match ledgers.get_mut(&writer) {
                Some(ledger) => ledger,
                None => return,
            }
        };
        ledger.outstanding = ledger.outstanding.saturating_sub(1);
        ledger.rejected.extend(rejected);
    }
}

/// A producer of the Kafka sink.
pub(super) type SinkProducer = BaseProducer<DeliveryContext>;

/// True for errors that are the record's fault (a dead letter is right).
fn record_at_fault(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidTimestamp
        )
    )
}

/// Why a writer's records did not all get through.
#[derive(Debug)]
pub(super) enum SendError {
    /// The producer's queue stayed full until the deadline.
    QueueFull,
    /// Records still unacknowledged at the deadline (how many).
    Unacknowledged(u64),
}

/// One writer's way into a producer: what it sends is charged to it.
#[derive(Clone, Copy)]
pub(super) struct Writer<'a> {
    pub(super) producer: &'a SinkProducer,
    pub(super) ledgers: &'a Ledgers,
    pub(super) number: usize,
}

impl Writer<'_> {
    /// Sends one message, waiting while librdkafka's queue is full until
    /// `deadline`. A record refused at once (too large, ...) goes to the
    /// writer's rejected records.
    pub(super) fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp: i64,
        deadline: impl Fn() -> Instant,
    ) -> Result<(), SendError> {
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, self.number)
            .payload(payload)
            .timestamp(timestamp);
        if let Some(key) = key {
            record = record.key(key);
        }
        // Counted before the send: its report may come on another thread
        // before `send` returns.
        let counted = self.number != SOLE_WRITER;
        if counted {
            self.ledgers.with(self.number, |ledger| ledger.outstanding += 1);
        }
        let uncount = || {
            if counted {
                self.ledgers.with(self.number, |ledger| ledger.outstanding -= 1);
            }
        };
        // Only a full queue reads the clock: not once per record.
        let mut until = None;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if Instant::now() > *until.get_or_insert_with(&deadline) {
                        uncount();
                        return Err(SendError::QueueFull);
                    }
                    self.producer.poll(Duration::from_millis(50));
                    record = back;
                }
                Err((error, _)) => {
                    uncount();
                    let rejected = Rejected::new(&error, key, payload, false);
                    self.ledgers
                        .with(self.number, |ledger| ledger.rejected.push(rejected));
                    return Ok(());
                }
            }
        }
    }

    /// Serves delivery reports (of every writer) without waiting.
    pub(super) fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits until every record this writer sent is reported (delivered or
    /// rejected), or `deadline`.
    pub(super) fn flush(&self, deadline: Instant) -> Result<(), SendError> {
        if self.number == SOLE_WRITER {
            // Its records are all the producer has.
            return self
                .producer
                .flush(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| SendError::Unacknowledged(self.producer.in_flight_count().max(0) as u64));
        }
        loop {
            let outstanding = self.ledgers.outstanding(self.number);
            if outstanding == 0 {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SendError::Unacknowledged(outstanding));
            }
            // `poll` serves events for all of its time: short slices.
            self.producer.poll(left.min(Duration::from_millis(5)));
        }
    }
}
