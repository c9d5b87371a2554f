//! One Kafka transaction per process per batch: the transactional producer
//! that a cluster member's tasks share (Kafka Streams' exactly-once v2).
//!
//! Every exactly-once Kafka sink of a cluster task (the repartition writers
//! and the pipeline's own Kafka sinks) writes through its process's
//! [`SharedProducer`] for its brokers and client settings, instead of a
//! producer of its own:
//!
//! - **Group commit.** A sink's batch *joins* the transaction open now
//!   ([`SharedProducer::join`]), sends its records, its marker and its
//!   source offsets, and asks for the commit. The first request closes the
//!   transaction to newcomers (they wait for the next one); the last
//!   contribution to finish commits it for all, and every contributor
//!   learns the [`Outcome`]. Tasks wait for each other only inside one
//!   transaction, never across batches, so a task with two Kafka sinks
//!   cannot deadlock.
//! - **Time.** A transaction takes newcomers for half of `timeout`, and
//!   each contribution's work must end by `timeout` after it began, so the
//!   broker (which keeps it `timeout` + 30 s) never times it out under its
//!   contributors; a commit that timed out is tried again meanwhile.
//! - **A contribution that fails** (a refused record with `on-error =
//!   "fail"`, a timeout) dooms its transaction: it is aborted, and the other
//!   contributors write their batches again in the next one while at least
//!   half their batch's `timeout` is left; past that, or when the
//!   transaction they joined ran out of time, their tasks start again from
//!   their last checkpoint (as superseded ones do).
//! - **The producer** has a transactional id of its own per process start
//!   (`<prefix>weir.<pipeline>.process.<token>`), and a new one whenever it
//!   is fenced or its transaction's fate is lost: a replaced producer's
//!   contributors end as superseded, and their tasks open again.
//! - **Fencing** is the sink's ([`super::KafkaSink`]): each task's marker
//!   names the process producer that writes it; the task's next owner
//!   fences that producer unless its owner released the task cleanly.
//!   No broker support for group-generation fencing (KIP-447) is needed.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::TopicPartitionList;

use super::delivery::{Ledgers, SinkProducer, Writer};
use super::{KafkaSinkSpec, fenced, new_producer, start_transactions};
use crate::kafka::describe;

/// The shared producers of one process, one per brokers and client
/// settings (sinks with different settings cannot share a transaction).
pub struct ProcessTransactions {
    /// What every producer's transactional id starts with.
    id_base: String,
    producers: Mutex<HashMap<String, Arc<SharedProducer>>>,
    counts: Arc<Counts>,
}

impl fmt::Debug for ProcessTransactions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessTransactions")
            .field("id_base", &self.id_base)
            .finish_non_exhaustive()
    }
}

/// What a process's shared producers did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransactionCounts {
    /// Transactions committed.
    pub committed: u64,
    /// Task batches those transactions carried.
    pub contributions: u64,
    /// Transactions aborted (their contributions were written again or
    /// failed).
    pub aborted: u64,
    /// Producers started (one per settings, and one per replacement).
    pub producers: u64,
}

#[derive(Debug, Default)]
struct Counts {
    committed: AtomicU64,
    contributions: AtomicU64,
    aborted: AtomicU64,
    producers: AtomicU64,
}

impl ProcessTransactions {
    /// The shared producers of a process running `pipeline`, with
    /// transactional ids after `ids_prefix` (a tenant's).
    pub fn new(pipeline: &str, ids_prefix: Option<&str>) -> Arc<Self> {
        Arc::new(ProcessTransactions {
            id_base: format!("{}weir.{pipeline}.process", ids_prefix.unwrap_or_default()),
            producers: Mutex::default(),
            counts: Arc::default(),
        })
    }

    /// The shared producer for a sink of `spec`'s brokers and settings.
    pub(super) fn producer_for(&self, spec: &KafkaSinkSpec) -> Arc<SharedProducer> {
        let key = format!(
            "{}|{:?}|{}",
            spec.client.brokers,
            spec.client.properties,
            spec.timeout.as_millis()
        );
        self.producers
            .lock()
            .expect("not poisoned")
            .entry(key)
            .or_insert_with(|| {
                Arc::new(SharedProducer {
                    spec: spec.clone(),
                    id_base: self.id_base.clone(),
                    ledgers: Arc::default(),
                    writers: AtomicUsize::new(1),
                    state: Mutex::default(),
                    turn: Condvar::new(),
                    offsets: Mutex::new(()),
                    counts: self.counts.clone(),
                })
            })
            .clone()
    }

    /// What the shared producers did so far.
    pub fn counts(&self) -> TransactionCounts {
        TransactionCounts {
            committed: self.counts.committed.load(Ordering::Relaxed),
            contributions: self.counts.contributions.load(Ordering::Relaxed),
            aborted: self.counts.aborted.load(Ordering::Relaxed),
            producers: self.counts.producers.load(Ordering::Relaxed),
        }
    }
}

/// One process-wide transactional producer and its open transaction.
pub(super) struct SharedProducer {
    /// The settings of the first sink that asked for it (the others have
    /// the same brokers, properties and timeout).
    spec: KafkaSinkSpec,
    id_base: String,
    ledgers: Arc<Ledgers>,
    /// The next writer number (0 is no one's).
    writers: AtomicUsize,
    state: Mutex<State>,
    /// Signalled when a transaction ends or a producer is replaced.
    turn: Condvar,
    /// Serializes `send_offsets_to_transaction` (librdkafka allows one at
    /// a time).
    offsets: Mutex<()>,
    counts: Arc<Counts>,
}

/// A producer started for the process, under a transactional id of its
/// own.
pub(super) struct Incarnation {
    /// Its transactional id (what the markers it writes name).
    pub(super) id: String,
    producer: SinkProducer,
}

#[derive(Default)]
struct State {
    /// The producer writing now; `None` until the first sink opens and
    /// after it was fenced or lost.
    incarnation: Option<Arc<Incarnation>>,
    /// The transaction open now.
    round: Option<Round>,
}

/// One transaction and its contributions.
struct Round {
    outcome: Arc<Slot>,
    /// Contributions joined and not yet done.
    active: usize,
    /// All contributions that joined.
    joined: u64,
    /// A contribution asked for the commit: newcomers wait for the next.
    closing: bool,
    /// Why it must be aborted, once a contribution gave up.
    doomed: Option<String>,
    /// When it began: newcomers join only in its first half of `timeout`,
    /// and every contribution's work ends by `timeout` after it, so that
    /// the broker never times it out under its contributors.
    started: Instant,
}

/// Where a transaction's outcome is posted for its contributors.
#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Outcome>>,
    posted: Condvar,
}

/// How a shared transaction ended, as each contributor learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Committed, with every contribution.
    Committed,
    /// Aborted: nothing of it was committed; the producer goes on, and a
    /// contribution may be written again in the next transaction.
    Aborted(String),
    /// The producer was fenced, or the transaction's fate is unknown: the
    /// producer is replaced, and its contributors' tasks must open again
    /// (the next opener's fencing settles what committed).
    Lost(String),
}

/// Why a sink could not join a shared transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum JoinError {
    /// The producer the sink opened with was replaced: the task must open
    /// again.
    Replaced,
    /// No transaction could begin (why): the producer is replaced.
    Lost(String),
    /// The transaction in progress did not end in time (why).
    TimedOut(String),
}

impl SharedProducer {
    /// The producer writing now, started (and its transactions initialized
    /// by `deadline`) when there is none.
    pub(super) fn current(&self, owner: &str, deadline: Instant) -> Result<Arc<Incarnation>, String> {
        let mut state = self.lock();
        if let Some(incarnation) = &state.incarnation {
            return Ok(incarnation.clone());
        }
        let id = format!("{}.{}", self.id_base, super::run_token());
        let producer = new_producer(&self.spec, owner, Some(&id), self.ledgers.clone())?;
        start_transactions(&producer, &id, &self.spec, owner, deadline).map_err(|failure| failure.message)?;
        tracing::info!("process producer `{id}` started");
        self.counts.producers.fetch_add(1, Ordering::Relaxed);
        let incarnation = Arc::new(Incarnation { id, producer });
        state.incarnation = Some(incarnation.clone());
        self.turn.notify_all();
        Ok(incarnation)
    }

    /// Joins the transaction open now (beginning one when none is), as a
    /// writer of `incarnation`; waits, until `deadline`, while the open one
    /// is being committed.
    pub(super) fn join(
        &self,
        incarnation: &Arc<Incarnation>,
        deadline: Instant,
    ) -> Result<Contribution<'_>, JoinError> {
        let mut state = self.lock();
        let open_for = self.spec.timeout / 2;
        while state
            .round
            .as_ref()
            .is_some_and(|round| round.closing || round.started.elapsed() > open_for)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(JoinError::TimedOut(
                    "the process's transaction in progress did not end within the batch's timeout".into(),
                ));
            }
            state = self.turn.wait_timeout(state, left).expect("not poisoned").0;
        }
        if !state
            .incarnation
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, incarnation))
        {
            return Err(JoinError::Replaced);
        }
        if state.round.is_none() {
            // `begin_transaction` asks no broker: it fails only on a
            // producer in a state it should not be in (a fatal error, most
            // often), which a new producer mends.
            if let Err(error) = incarnation.producer.begin_transaction() {
                state.incarnation = None;
                return Err(JoinError::Lost(format!(
                    "cannot begin a transaction: {}",
                    describe(&error)
                )));
            }
            state.round = Some(Round {
                outcome: Arc::default(),
                active: 0,
                joined: 0,
                closing: false,
                doomed: None,
                started: Instant::now(),
            });
        }
        let round = state.round.as_mut().expect("begun above");
        round.active += 1;
        round.joined += 1;
        Ok(Contribution {
            shared: self,
            incarnation: incarnation.clone(),
            outcome: round.outcome.clone(),
            ends_by: round.started + self.spec.timeout,
            writer: self.writers.fetch_add(1, Ordering::Relaxed),
            finished: false,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// One contribution is done (`failure`: it gave up): the last one ends
    /// the transaction; the others wait for its outcome when they `wait`
    /// (one that gave up does not).
    fn finish(&self, outcome: &Arc<Slot>, failure: Option<String>, wait: bool) -> Option<Outcome> {
        let mut state = self.lock();
        // A round runs on the producer writing now: it is replaced only
        // once no round is open.
        let incarnation = state.incarnation.clone().expect("a round has its producer");
        let round = state.round.as_mut().expect("a contribution is in the open round");
        if let Some(why) = failure {
            round.doomed.get_or_insert(why);
        }
        round.closing = true;
        round.active -= 1;
        if round.active > 0 {
            drop(state);
            return wait.then(|| outcome.wait());
        }
        let doomed = round.doomed.clone();
        let joined = round.joined;
        let started = round.started;
        drop(state);

        // Whatever happens in there, the round ends and its contributors
        // hear of it (a panic would leave them waiting).
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.end(&incarnation, doomed, joined, started)
        }))
        .unwrap_or_else(|_| Outcome::Lost("ending the transaction panicked".into()));

        let mut state = self.lock();
        if matches!(ended, Outcome::Lost(_)) {
            state.incarnation = None;
        }
        state.round = None;
        outcome.post(ended.clone());
        self.turn.notify_all();
        Some(ended)
    }

    /// Commits (or, when `doomed`, aborts) the transaction of
    /// `incarnation`, begun at `started`. A commit that timed out is tried
    /// again while the broker keeps the transaction open; one that needs an
    /// abort is aborted.
    fn end(
        &self,
        incarnation: &Incarnation,
        doomed: Option<String>,
        joined: u64,
        started: Instant,
    ) -> Outcome {
        let producer = &incarnation.producer;
        // About when the broker aborts the transaction by itself.
        let until = started + self.spec.timeout + super::TRANSACTION_MARGIN - super::MIN_STEP;
        let step = || super::step_timeout(until);
        let lost = |what: &str, error: &KafkaError| {
            Outcome::Lost(format!(
                "process producer `{}` {what}: {}",
                incarnation.id,
                describe(error)
            ))
        };
        let why = match doomed {
            Some(why) => why,
            None => loop {
                let error = match producer.commit_transaction(step()) {
                    Ok(()) => {
                        self.counts.committed.fetch_add(1, Ordering::Relaxed);
                        self.counts.contributions.fetch_add(joined, Ordering::Relaxed);
                        return Outcome::Committed;
                    }
                    Err(error) => error,
                };
                match &error {
                    _ if fenced(&error) => return lost("was fenced", &error),
                    KafkaError::Transaction(cause) if cause.is_fatal() => return lost("failed", &error),
                    KafkaError::Transaction(cause) if cause.txn_requires_abort() => {
                        break format!("the commit failed: {}", describe(&error));
                    }
                    KafkaError::Transaction(cause) if cause.is_retriable() && Instant::now() < until => {
                        tracing::warn!(
                            "process producer `{}`: the commit is not through yet ({}); trying again",
                            incarnation.id,
                            describe(&error)
                        );
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    // Neither through nor refused: its fate is the broker's.
                    KafkaError::Transaction(_) => return lost("cannot finish a commit", &error),
                    // Records not acknowledged: the commit was not sent.
                    _ => break format!("the commit failed: {}", describe(&error)),
                }
            },
        };
        match producer.abort_transaction(step()) {
            Ok(()) => {
                self.counts.aborted.fetch_add(1, Ordering::Relaxed);
                Outcome::Aborted(why)
            }
            Err(error) => lost(&format!("cannot abort ({why})"), &error),
        }
    }
}

impl Slot {
    fn post(&self, outcome: Outcome) {
        *self.outcome.lock().expect("not poisoned") = Some(outcome);
        self.posted.notify_all();
    }

    /// Waits for the outcome (the last contributor always posts one).
    fn wait(&self) -> Outcome {
        let mut outcome = self.outcome.lock().expect("not poisoned");
        loop {
            if let Some(outcome) = &*outcome {
                return outcome.clone();
            }
            outcome = self.posted.wait(outcome).expect("not poisoned");
        }
    }
}

/// One sink's batch in a shared transaction. Dropped without
/// [`Contribution::commit`], it dooms the transaction.
pub(super) struct Contribution<'a> {
    shared: &'a SharedProducer,
    incarnation: Arc<Incarnation>,
    outcome: Arc<Slot>,
    /// When its work must be done (its transaction's `timeout`).
    ends_by: Instant,
    writer: usize,
    finished: bool,
}

impl Contribution<'_> {
    /// When this contribution's records, marker and offsets must be in:
    /// `timeout` after its transaction began.
    pub(super) fn ends_by(&self) -> Instant {
        self.ends_by
    }

    /// The way to send this contribution's records.
    pub(super) fn writer(&self) -> Writer<'_> {
        Writer {
            producer: &self.incarnation.producer,
            ledgers: &self.shared.ledgers,
            number: self.writer,
        }
    }

    /// Adds consumed offsets (or a marker) of a group to the transaction.
    pub(super) fn send_offsets(
        &self,
        offsets: &TopicPartitionList,
        metadata: &ConsumerGroupMetadata,
        deadline: Instant,
    ) -> KafkaResult<()> {
        let _turn = self.shared.offsets.lock().expect("not poisoned");
        // No more than the contribution's time (a second at least: after
        // a wait for the lock, the call still gets a chance).
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        self.incarnation
            .producer
            .send_offsets_to_transaction(offsets, metadata, timeout)
    }

    /// The producer's fatal error, when it has one (fenced, most often):
    /// nothing more commits through it.
    pub(super) fn fatal_error(&self) -> Option<String> {
        let (code, reason) = self.incarnation.producer.client().fatal_error()?;
        Some(format!(
            "process producer `{}` failed: {reason} ({code:?})",
            self.incarnation.id
        ))
    }

    /// Asks for the commit and waits for the transaction's outcome.
    pub(super) fn commit(mut self) -> Outcome {
        self.finished = true;
        let outcome = self.shared.finish(&self.outcome, None, true).expect("waited for");
        self.shared.ledgers.forget(self.writer);
        outcome
    }

    /// Gives up: the transaction will be aborted.
    pub(super) fn abandon(mut self, why: &str) {
        self.finished = true;
        self.give_up(why.to_owned());
    }

    fn give_up(&self, why: String) {
        self.shared.finish(&self.outcome, Some(why), false);
        self.shared.ledgers.forget(self.writer);
    }
}

impl Drop for Contribution<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.give_up("a sink stopped in the middle of its batch".into());
        }
    }
}
