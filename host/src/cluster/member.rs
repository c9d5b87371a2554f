//! One process's share of a cluster pipeline: membership of the consumer
//! group, and the tasks of the partitions the group gives it.
//!
//! The member subscribes to each segment's lead topic with the group
//! `[cluster] group-id` (cooperative-sticky assignment: a rebalance moves
//! only the partitions that must move). It reads nothing itself: the
//! partitions it is given are paused at once, and each becomes a task (a
//! pipeline on the process's engine) that reads its partition directly.
//!
//! - **Assigned**: the task starts; it restores its state from the shared
//!   checkpoint store (the last checkpoint, then the batches logged after
//!   it) before its first batch.
//! - **Revoked**: the rebalance waits while the task finishes its batch in
//!   flight and writes a final checkpoint, so the next owner starts where
//!   it ended.
//! - **A member that dies** (kill -9, a lost machine) is dropped by the
//!   group after `session-timeout`; its partitions' next owners replay
//!   from the store what it had logged, and its open transaction is
//!   aborted when they fence its process producer, which the tasks'
//!   markers name (the Kafka sink's shared transactions).
//! - **A task that fails** stops the member (exit status 1): its partitions
//!   move to the others, who will fail the same way if the cause is the
//!   data, or carry on if it was this process.
//! - **A task fenced by another process** (the process producer it wrote
//!   through was fenced, or another process wrote its checkpoint) was also
//!   given to another member: a group that moved the partition while this
//!   member still ran it (a long pause), or a broker that assigned it
//!   twice. Fencing kept the output exact; the member drops the task and,
//!   while the group still gives it the partition, starts it again after
//!   [`MIGRATED_RETRY`], restoring from the store. The process's other
//!   tasks that wrote through the fenced producer go the same way (a new
//!   producer replaces it). A task superseded more than
//!   [`SUPERSEDED_LIMIT`] times in [`SUPERSEDED_WINDOW`] fails the member.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;

use super::ClusterError;
use super::plan::ClusterPlan;
use super::topics::prepare_topics;
use crate::engine::{Engine, PipelineHandle};
use crate::error::EngineError;
use crate::kafka::{LogContext, describe};
use crate::pipeline::{RunOptions, RunSummary, StopMode};
use crate::sink::kafka::{ProcessTransactions, TransactionCounts};
use crate::source::now_ms;
use crate::ui::directory::{HeldPartition, Membership, MembershipBoard};

/// How often the member polls the group (heartbeats go on in the
/// background; a poll serves rebalances).
const POLL: Duration = Duration::from_millis(100);

/// How long a member waits before it starts again a task that another
/// process fenced, while the partition is still its own.
pub const MIGRATED_RETRY: Duration = Duration::from_secs(2);

/// How many times a task may be superseded within [`SUPERSEDED_WINDOW`]
/// before the member gives up on it (and fails).
pub const SUPERSEDED_LIMIT: usize = 20;

/// The window [`SUPERSEDED_LIMIT`] counts in.
pub const SUPERSEDED_WINDOW: Duration = Duration::from_secs(600);

/// What a member needs besides the plan.
pub struct MemberOptions {
    /// The pipeline file (relative paths and messages).
    pub path: PathBuf,
    /// How tasks run.
    pub run: RunOptions,
    /// Lines for the operator: partitions taken and given up.
    pub report: Box<dyn Fn(&str) + Send + Sync>,
    /// Where the member publishes the partitions it holds and its
    /// rebalances (for the web UI and `/metrics`).
    pub membership: MembershipBoard,
}

/// What a member did, when it left the group.
#[derive(Debug, Clone, Default)]
pub struct MemberSummary {
    /// Rebalances it took part in (assignments and revocations).
    pub rebalances: u64,
    /// The summary of every task it ran, in the order they ended.
    pub tasks: Vec<RunSummary>,
    /// What the process's shared Kafka transactions did.
    pub transactions: TransactionCounts,
}

/// Runs this process's share of `plan` on `engine` until `stop` is set
/// (it then stops its tasks, each with a final checkpoint, and leaves the
/// group) or a task fails.
pub fn run_member(
    engine: &Engine,
    plan: ClusterPlan,
    options: MemberOptions,
    stop: &AtomicBool,
) -> Result<MemberSummary, ClusterError> {
    let counts = prepare_topics(&plan)?;
    let transactions = ProcessTransactions::new(plan.name(), plan.kafka().ids_prefix.as_deref());
    let plan = plan.sharing_transactions(transactions.clone());
    // Every segment's task must build before the member joins: a bad
    // plugin or sink fails here, not in the middle of a rebalance.
    for segment in 0..plan.segments().len() {
        engine
            .prepare_parsed(plan.task(segment, 0), &options.path, None)
            .map_err(|error| ClusterError::Task {
                task: plan.task_name(segment, 0),
                message: error.to_string(),
            })?;
    }
    let group = plan.cluster().group_id.clone();
    let tasks = Arc::new(Tasks {
        engine: engine.clone(),
        plan,
        options,
        running: Mutex::new(BTreeMap::new()),
        assigned: Mutex::new(BTreeMap::new()),
        retries: Mutex::new(BTreeMap::new()),
        superseded: Mutex::new(BTreeMap::new()),
        ended: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        rebalances: AtomicU64::new(0),
        last_rebalance_ms: Mutex::new(None),
        leaving: AtomicBool::new(false),
        transactions: transactions.clone(),
        published: Mutex::default(),
    });
    tasks.publish();
    let consumer = membership(&tasks)?;
    let topics: Vec<&str> = tasks.plan.segments().iter().map(|s| s.lead_topic()).collect();
    consumer.subscribe(&topics).map_err(|e| ClusterError::Kafka {
        message: format!("cannot join the group `{group}`: {}", describe(&e)),
    })?;
    (tasks.options.report)(&format!(
        "joined group `{group}` ({} segment(s): {}; input topic {} partitions, repartition topics {})",
        tasks.plan.segments().len(),
        tasks
            .plan
            .segments()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        counts.input,
        counts.repartition
    ));
    let outcome = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        match consumer.poll(POLL) {
            // Fetched before its partition was paused: its task reads it.
            Some(Ok(_)) | None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            // Retrying cannot help: sitting in the group holding nothing
            // would look healthy and process nothing.
            Some(Err(error)) if cannot_join(&error) => {
                break Err(ClusterError::Kafka {
                    message: format!("cannot take part in the group `{group}`: {}", describe(&error)),
                });
            }
            Some(Err(error)) => tracing::warn!("group `{group}`: {}", describe(&error)),
        }
        if let Some(failure) = tasks.failure() {
            break Err(failure);
        }
        tasks.retry_due();
        tasks.publish_transactions();
    };
    // Leave: every task ends with a final checkpoint first, then the group
    // hands the partitions to the others. A rebalance that the closing
    // consumer serves meanwhile starts nothing.
    tasks.leaving.store(true, Ordering::Release);
    tasks.stop_all();
    consumer.unsubscribe();
    drop(consumer);
    (tasks.options.report)(&format!("left group `{group}`"));
    let summary = MemberSummary {
        rebalances: tasks.rebalances.load(Ordering::Relaxed),
        tasks: std::mem::take(&mut *tasks.ended.lock().expect("not poisoned")),
        transactions: transactions.counts(),
    };
    match outcome {
        Ok(()) => tasks.failure().map_or(Ok(summary), Err),
        Err(error) => Err(error),
    }
}

/// True for a group error that no retry mends: the member could only sit
/// in the group (or outside it) holding nothing. The brokers refuse the
/// session timeout (outside their `group.min/max.session.timeout.ms`), the
/// group or a topic is not authorized, the group is full, or the client
/// says the error is fatal.
fn cannot_join(error: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as Code;
    match error {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            Code::InvalidSessionTimeout
                | Code::GroupAuthorizationFailed
                | Code::TopicAuthorizationFailed
                | Code::InconsistentGroupProtocol
                | Code::GroupMaxSizeReached
        ),
        _ => false,
    }
}

/// The group membership consumer.
fn membership(tasks: &Arc<Tasks>) -> Result<BaseConsumer<MemberContext>, ClusterError> {
    let cluster = tasks.plan.cluster();
    let mut config = tasks.plan.kafka().client.config();
    let session = cluster.session_timeout.as_millis().to_string();
    let heartbeat = (cluster.session_timeout / 4).as_millis().max(100).to_string();
    for (name, value) in [
        ("group.id", cluster.group_id.as_str()),
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("session.timeout.ms", session.as_str()),
        ("heartbeat.interval.ms", heartbeat.as_str()),
        // Also how long a rebalance waits for every member to rejoin (a
        // member rejoins once its revoked tasks have stopped).
        ("max.poll.interval.ms", "60000"),
        ("enable.auto.commit", "false"),
        ("enable.partition.eof", "false"),
        // It reads nothing: keep what it fetches before a pause small.
        ("queued.max.messages.kbytes", "64"),
        ("max.partition.fetch.bytes", "4096"),
    ] {
        config.set(name, value);
    }
    config
        .create_with_context(MemberContext {
            log: LogContext {
                owner: format!("cluster group `{}`", cluster.group_id),
            },
            tasks: tasks.clone(),
        })
        .map_err(|e| ClusterError::Kafka {
            message: format!("cannot create the group's consumer: {}", describe(&e)),
        })
}

/// The tasks this member runs.
struct Tasks {
    engine: Engine,
    plan: ClusterPlan,
    options: MemberOptions,
    /// By `(segment, partition)`.
    running: Mutex<BTreeMap<(usize, i32), PipelineHandle>>,
    /// The tasks whose partitions the group gives this member, with since
    /// when (milliseconds since the Unix epoch).
    assigned: Mutex<BTreeMap<(usize, i32), i64>>,
    /// Tasks another process fenced, and when to start them again.
    retries: Mutex<BTreeMap<(usize, i32), Instant>>,
    /// When each task was superseded lately (within
    /// [`SUPERSEDED_WINDOW`]).
    superseded: Mutex<BTreeMap<(usize, i32), Vec<Instant>>>,
    ended: Mutex<Vec<RunSummary>>,
    failure: Mutex<Option<ClusterError>>,
    rebalances: AtomicU64,
    last_rebalance_ms: Mutex<Option<i64>>,
    /// Set when the member leaves the group: partitions given to it from
    /// then on (while its consumer closes) start no task.
    leaving: AtomicBool,
    /// The process's shared transactional producers.
    transactions: Arc<ProcessTransactions>,
    /// Their counts as last published.
    published: Mutex<TransactionCounts>,
}

impl Tasks {
    /// The tasks of the partitions in `list`.
    fn of(&self, list: &TopicPartitionList) -> Vec<(usize, i32)> {
        list.elements()
            .iter()
            .filter_map(|elem| Some((self.plan.segment_led_by(elem.topic())?, elem.partition())))
            .collect()
    }

    /// Starts the tasks of newly assigned partitions.
    fn assign(&self, list: &TopicPartitionList) {
        let tasks = self.of(list);
        if tasks.is_empty() || self.leaving.load(Ordering::Acquire) {
            return;
        }
        self.rebalanced();
        {
            let now = now_ms();
            let mut assigned = self.assigned.lock().expect("not poisoned");
            for key in &tasks {
                assigned.entry(*key).or_insert(now);
            }
        }
        for (segment, partition) in &tasks {
            if let Err(error) = self.start(*segment, *partition) {
                self.fail(error);
            }
        }
        self.report("took", &tasks);
        self.publish();
    }

    fn start(&self, segment: usize, partition: i32) -> Result<(), ClusterError> {
        let key = (segment, partition);
        if self.running.lock().expect("not poisoned").contains_key(&key) {
            return Ok(());
        }
        let name = self.plan.task_name(segment, partition);
        let failed = |error: crate::error::EngineError| ClusterError::Task {
            task: name.clone(),
            message: error.to_string(),
        };
        let prepared = self
            .engine
            .prepare_parsed(self.plan.task(segment, partition), &self.options.path, None)
            .map_err(failed)?;
        let handle = self.engine.start(prepared, self.options.run).map_err(failed)?;
        self.running.lock().expect("not poisoned").insert(key, handle);
        Ok(())
    }

    /// Stops the tasks of revoked partitions, each with a final checkpoint,
    /// before the group hands them on.
    fn revoke(&self, list: &TopicPartitionList) {
        let tasks = self.of(list);
        if tasks.is_empty() {
            return;
        }
        self.rebalanced();
        {
            let mut assigned = self.assigned.lock().expect("not poisoned");
            let mut retries = self.retries.lock().expect("not poisoned");
            for key in &tasks {
                assigned.remove(key);
                retries.remove(key);
            }
        }
        let handles: Vec<PipelineHandle> = {
            let mut running = self.running.lock().expect("not poisoned");
            tasks.iter().filter_map(|key| running.remove(key)).collect()
        };
        self.finish(handles);
        self.report("gave up", &tasks);
        self.publish();
    }

    /// Stops every task.
    fn stop_all(&self) {
        let handles: Vec<PipelineHandle> = {
            let mut running = self.running.lock().expect("not poisoned");
            std::mem::take(&mut *running).into_values().collect()
        };
        self.finish(handles);
        self.assigned.lock().expect("not poisoned").clear();
        self.publish();
    }

    /// Stops `handles` together and waits for each.
    fn finish(&self, handles: Vec<PipelineHandle>) {
        for handle in &handles {
            handle.stop(StopMode::Now);
        }
        for handle in handles {
            let outcome = handle.wait();
            self.engine.supervisor().remove(handle.id());
            match outcome {
                Ok(summary) => self.ended.lock().expect("not poisoned").push(summary),
                Err(error) => self.failed(None, &handle, &error),
            }
        }
    }

    /// A task ended with `error`: another process runs it too (dropped,
    /// and retried when `key` is given and still assigned), or a failure
    /// of the member.
    fn failed(&self, key: Option<(usize, i32)>, handle: &PipelineHandle, error: &EngineError) {
        let message = error.to_string();
        if !error.superseded() {
            self.fail(ClusterError::Task {
                task: handle.name().to_owned(),
                message,
            });
            return;
        }
        tracing::warn!(
            task = handle.name(),
            "task stopped without committing its batch (another process took it over, or this \
             process's transaction could not take the batch); nothing it wrote was committed twice, \
             and it starts again from the store while the partition is still this member's: {message}"
        );
        if let Some(key) = key
            && self.assigned.lock().expect("not poisoned").contains_key(&key)
        {
            // A task superseded again and again is not being taken over: its
            // process cannot write it (a producer that keeps failing, or a
            // partition the group gives to two members that fence each
            // other); the member fails, and the group moves its partitions.
            let now = Instant::now();
            let recent = {
                let mut superseded = self.superseded.lock().expect("not poisoned");
                let times = superseded.entry(key).or_default();
                times.retain(|at| now.duration_since(*at) < SUPERSEDED_WINDOW);
                times.push(now);
                times.len()
            };
            if recent > SUPERSEDED_LIMIT {
                self.fail(ClusterError::Task {
                    task: handle.name().to_owned(),
                    message: format!(
                        "stopped without committing its batch {recent} times in {}; the last: {message}",
                        humantime::format_duration(SUPERSEDED_WINDOW)
                    ),
                });
                return;
            }
            self.retries
                .lock()
                .expect("not poisoned")
                .insert(key, now + MIGRATED_RETRY);
        }
    }

    /// Starts again the fenced tasks whose wait is over and whose
    /// partitions are still this member's.
    fn retry_due(&self) {
        let now = Instant::now();
        let due: Vec<(usize, i32)> = {
            let mut retries = self.retries.lock().expect("not poisoned");
            let due: Vec<(usize, i32)> = retries
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(key, _)| *key)
                .collect();
            for key in &due {
                retries.remove(key);
            }
            due
        };
        for (segment, partition) in due {
            if !self
                .assigned
                .lock()
                .expect("not poisoned")
                .contains_key(&(segment, partition))
            {
                continue;
            }
            match self.start(segment, partition) {
                Ok(()) => self.report("took back", &[(segment, partition)]),
                Err(error) => self.fail(error),
            }
        }
    }

    /// The first failure of a task, if one failed (a task that ended by
    /// itself, which a Kafka task never should, counts as one).
    fn failure(&self) -> Option<ClusterError> {
        let ended: Vec<((usize, i32), PipelineHandle)> = {
            let mut running = self.running.lock().expect("not poisoned");
            let keys: Vec<(usize, i32)> = running
                .iter()
                .filter(|(_, handle)| handle.outcome().is_some())
                .map(|(key, _)| *key)
                .collect();
            keys.iter()
                .filter_map(|key| Some((*key, running.remove(key)?)))
                .collect()
        };
        for (key, handle) in ended {
            self.engine.supervisor().remove(handle.id());
            if let Some(Err(error)) = handle.outcome() {
                self.failed(Some(key), &handle, &error);
            } else {
                self.fail(ClusterError::Task {
                    task: handle.name().to_owned(),
                    message: "ended by itself".into(),
                });
            }
        }
        self.failure.lock().expect("not poisoned").clone()
    }

    fn fail(&self, error: ClusterError) {
        tracing::error!("{error}");
        self.failure.lock().expect("not poisoned").get_or_insert(error);
    }

    /// Counts a rebalance that changed what this member holds.
    fn rebalanced(&self) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        *self.last_rebalance_ms.lock().expect("not poisoned") = Some(now_ms());
    }

    /// Publishes the partitions the group gives this member, its
    /// rebalances and its transactions.
    fn publish(&self) {
        let transactions = self.transactions.counts();
        let held = self
            .assigned
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(&(segment, partition), &since_ms)| HeldPartition {
                segment: self.plan.segments()[segment].name.clone(),
                topic: self.plan.segments()[segment].lead_topic().to_owned(),
                partition,
                task: self.plan.task_name(segment, partition),
                since_ms,
            })
            .collect();
        self.options.membership.publish(Membership {
            pipeline: self.plan.name().to_owned(),
            group: self.plan.cluster().group_id.clone(),
            held,
            rebalances: self.rebalances.load(Ordering::Relaxed),
            last_rebalance_ms: *self.last_rebalance_ms.lock().expect("not poisoned"),
            transactions: transactions.committed,
            transaction_batches: transactions.contributions,
            transactions_aborted: transactions.aborted,
        });
        *self.published.lock().expect("not poisoned") = transactions;
    }

    /// Publishes again when the transaction counts moved since.
    fn publish_transactions(&self) {
        let published = *self.published.lock().expect("not poisoned");
        if self.transactions.counts() != published {
            self.publish();
        }
    }

    /// Tells the operator what changed and what the member holds now.
    fn report(&self, what: &str, tasks: &[(usize, i32)]) {
        let changed = self.describe(tasks.iter().copied());
        let holding = {
            let running = self.running.lock().expect("not poisoned");
            self.describe(running.keys().copied())
        };
        (self.options.report)(&format!(
            "{what} {changed}; holds {}",
            if holding.is_empty() { "nothing" } else { &holding }
        ));
    }

    /// `input 0,3 · counts 1` for a set of tasks.
    fn describe(&self, tasks: impl Iterator<Item = (usize, i32)>) -> String {
        let mut by_segment: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
        for (segment, partition) in tasks {
            by_segment.entry(segment).or_default().push(partition);
        }
        by_segment
            .into_iter()
            .map(|(segment, partitions)| {
                format!(
                    "{} {}",
                    self.plan.segments()[segment].name,
                    partitions
                        .iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// The membership consumer's context: rebalances start and stop tasks.
struct MemberContext {
    log: LogContext,
    tasks: Arc<Tasks>,
}

impl ClientContext for MemberContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => self.tasks.revoke(list),
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => tracing::warn!("rebalance: {}", describe(error)),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // The tasks read these partitions; the member only holds them.
            if let Err(error) = consumer.pause(list) {
                tracing::warn!("cannot pause the assigned partitions: {}", describe(&error));
            }
            self.tasks.assign(list);
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode as Code;

    use super::*;

    #[test]
    fn errors_no_retry_mends_end_the_member_and_passing_ones_do_not() {
        for code in [
            Code::InvalidSessionTimeout,
            Code::GroupAuthorizationFailed,
            Code::TopicAuthorizationFailed,
        ] {
            assert!(cannot_join(&KafkaError::MessageConsumption(code)), "{code:?}");
        }
        assert!(cannot_join(&KafkaError::MessageConsumptionFatal(Code::Fail)));
        for code in [
            Code::BrokerTransportFailure,
            Code::UnknownMemberId,
            Code::RebalanceInProgress,
            Code::AllBrokersDown,
        ] {
            assert!(!cannot_join(&KafkaError::MessageConsumption(code)), "{code:?}");
        }
        assert!(!cannot_join(&KafkaError::PartitionEOF(0)));
    }
}
