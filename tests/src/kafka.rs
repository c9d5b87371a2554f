//! A real Kafka-protocol broker for one test, and a client to feed and read
//! it independently of Weir.
//!
//! The broker is noida-db 0.2.3 (a single binary from PyPI that speaks the
//! Kafka protocol, transactions and `read_committed` included), installed
//! by `tests/broker/install` into `target/kafka-broker` (the README's test
//! command runs it). Each [`Broker`] is its own process on a free port with
//! its own data directory, killed (SIGKILL: it ignores SIGTERM) when
//! dropped. A missing broker fails the test with the command that installs
//! it.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// The broker binary, installed by `tests/broker/install`.
pub fn broker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_TEST_KAFKA_BROKER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kafka-broker/venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("site-packages/noida_db/noida-db"))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the test Kafka broker is not installed in {}: run `tests/broker/install` \
             (the README's test command does)",
            venv.display()
        )
    })
}

/// One broker process.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    data: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker on a free port and waits until it answers.
    pub fn start() -> Self {
        Self::start_on(crate::free_port())
    }

    /// Starts a broker on `port` and waits until it answers.
    pub fn start_on(port: u16) -> Self {
        let data = tempfile::Builder::new()
            .prefix("weir-kafka-")
            .tempdir()
            .expect("cannot create the broker's data directory");
        let mut broker = Self {
            child: None,
            port,
            data,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.data.path().join("broker.log")).expect("broker log");
        let child = Command::new(broker_binary())
            .args(["start", "--data-dir"])
            .arg(self.data.path().join("data"))
            .args(["--only", "kafka", "--kafka-port", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the test Kafka broker: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test Kafka broker did not open port {} within 30 s; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:port`, for `brokers = ...`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("broker.log")).unwrap_or_default()
    }

    /// Kills the broker (SIGKILL); its data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker the way an operator does (`noida-db down`: it saves
    /// its data; a SIGKILLed noida-db loses what it had not saved).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let stopped = Command::new(broker_binary())
                .args(["down", "--data-dir"])
                .arg(self.data.path().join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port, with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.address());
        config
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().expect("admin client");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &options,
        ))
        .expect("create topics");
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("cannot create topic {name}: {code:?}"));
        }
    }

    /// Grows `topic` to `partitions` partitions.
    pub fn add_partitions(&self, topic: &str, partitions: usize) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().expect("admin client");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(admin.create_partitions(&[NewPartitions::new(topic, partitions)], &options))
            .expect("create partitions");
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("cannot add partitions to {name}: {code:?}"));
        }
    }

    /// A producer of this broker (acks from all, 5 ms linger).
    pub fn producer(&self) -> BaseProducer {
        self.config()
            .set("linger.ms", "5")
            // Keyless records to random partitions, one by one: by default a
            // burst sticks to one partition and may leave the others empty.
            .set("sticky.partitioning.linger.ms", "0")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer")
    }

    /// Produces `values` (no key) to `topic`, spread over its partitions;
    /// returns once all are acknowledged.
    pub fn produce(&self, topic: &str, values: &[String]) {
        self.produce_into(topic, None, values);
    }

    /// Produces `values` (no key) to partition `partition` of `topic`, in
    /// order; returns once all are acknowledged.
    pub fn produce_to(&self, topic: &str, partition: i32, values: &[String]) {
        self.produce_into(topic, Some(partition), values);
    }

    fn produce_into(&self, topic: &str, partition: Option<i32>, values: &[String]) {
        let producer: BaseProducer = self
            .config()
            .set("linger.ms", "5")
            // Keyless records to random partitions, one by one: by default a
            // burst sticks to one partition and may leave the others empty.
            .set("sticky.partitioning.linger.ms", "0")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
        for value in values {
            let mut record = BaseRecord::<(), str>::to(topic).payload(value.as_str());
            if let Some(partition) = partition {
                record = record.partition(partition);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        producer.poll(Duration::from_millis(10));
                        record = back;
                    }
                    Err((error, _)) => panic!("cannot produce to {topic}: {error}"),
                }
            }
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("records acknowledged");
    }

    /// Every record of `topic` a `read_committed` consumer sees now, by
    /// partition in offset order: (partition, offset, key, value).
    pub fn read_committed(&self, topic: &str) -> Vec<Received> {
        self.read_committed_from(topic, &BTreeMap::new())
    }

    /// What a `read_committed` consumer sees now from `starts` (partition
    /// to offset; partitions not in it from their beginning), by partition
    /// in offset order: a reader that comes in at those offsets.
    pub fn read_committed_from(&self, topic: &str, starts: &BTreeMap<i32, i64>) -> Vec<Received> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", format!("weir-test-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let mut list = TopicPartitionList::new();
        for partition in &partitions {
            let start = starts
                .get(partition)
                .map_or(Offset::Beginning, |&at| Offset::Offset(at));
            list.add_partition_offset(topic, *partition, start)
                .expect("partition");
        }
        consumer.assign(&list).expect("assign");
        let mut at_end: BTreeMap<i32, bool> = partitions.iter().map(|p| (*p, false)).collect();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while at_end.values().any(|end| !end) {
            assert!(Instant::now() < deadline, "reading {topic} took over 60 s");
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    at_end.insert(message.partition(), false);
                    out.push(Received {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                    });
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition, true);
                }
                Some(Err(error)) => panic!("reading {topic}: {error}"),
                None => {}
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }

    /// The offset group `group` committed for each partition of `topic`.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let consumer: BaseConsumer = self.config().set("group.id", group).create().expect("consumer");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|elem| match elem.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, as text.
    pub key: Option<String>,
    /// Value, as text.
    pub value: String,
}

/// Runs a future of the admin client to completion on this thread (the
/// admin client's futures are woken by its own polling thread).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(50)),
        }
    }
}
