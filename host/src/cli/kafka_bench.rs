//! `weir bench --suite kafka`: the word count end to end through Kafka,
//! next to the same word count over files, in one run.
//!
//! The benchmark text (the Zipf corpus) is written to files and preloaded
//! into a topic. Then the real `weir run --available-now` binary runs twice
//! as a child process: topic → `split-words` → count → topic (exactly
//! once), and files → the same stages → a files sink. Each is timed from
//! spawn to exit, with its CPU time and peak memory; the Kafka run's output
//! is read back and its counts must add up to the words produced. The
//! broker is the one given (`--brokers`), or a noida-db started here from
//! `target/kafka-broker` (what `tests/broker/install` installs), on the same
//! cores: its CPU time is part of the Kafka run's cost.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::bench::wordcount_toml_into;
use super::corpus::{Corpus, CorpusKind, CorpusStats};
use super::end_to_end;
use super::process::{ChildUsage, wait_measured};

/// What the Kafka benchmark measured.
#[derive(Debug, Clone)]
pub struct KafkaReport {
    /// The text.
    pub corpus: CorpusStats,
    /// How long preloading the topic took.
    pub load: Duration,
    /// The Kafka → Kafka run.
    pub kafka: ChildUsage,
    /// The broker's CPU time during the Kafka run (when started here).
    pub broker_cpu: Option<Duration>,
    /// The files → files run.
    pub files: ChildUsage,
    /// Topic partitions.
    pub partitions: i32,
}

impl KafkaReport {
    /// Words per second of a run.
    pub fn words_per_second(&self, usage: &ChildUsage) -> f64 {
        self.corpus.words as f64 / usage.elapsed.as_secs_f64()
    }
}

/// A broker process started for the benchmark, killed when dropped.
pub(super) struct LocalBroker {
    child: Child,
    /// `127.0.0.1:port`.
    pub(super) address: String,
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the installed noida-db on a free port, its data in `dir`.
pub(super) fn start_broker(dir: &Path) -> anyhow::Result<LocalBroker> {
    let binary = super::process::installed_noida()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::fs::File::create(dir.join("broker.log"))?;
    let child = Command::new(&binary)
        .args(["start", "--data-dir"])
        .arg(dir.join("broker-data"))
        .args(["--only", "kafka", "--kafka-port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let broker = LocalBroker {
        child,
        address: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the broker did not open port {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(broker)
}

/// CPU time of a process so far (user + system), from `/proc`.
fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / per_second))
}

/// A client configuration of `brokers`.
pub(super) fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

/// Runs the benchmark over `lines` lines on `partitions` partitions (topic
/// partitions, pipeline partitions and worker threads), with `weir` (the
/// binary) and the `split-words` component at `plugin`.
pub fn run(
    weir: &Path,
    plugin: &Path,
    lines: u64,
    partitions: usize,
    brokers: Option<&str>,
    progress: impl Fn(&str),
) -> anyhow::Result<KafkaReport> {
    let scratch = tempfile::Builder::new().prefix("weir-kafka-bench-").tempdir()?;
    let dir = scratch.path();
    let local = match brokers {
        Some(_) => None,
        None => Some(start_broker(dir)?),
    };
    let brokers = brokers.map_or_else(|| local.as_ref().expect("started").address.clone(), str::to_owned);
    let tag = std::process::id();
    let (input_topic, output_topic) = (format!("bench-lines-{tag}"), format!("bench-counts-{tag}"));
    let topic_partitions = partitions as i32;
    progress(&format!("creating topics on {brokers}"));
    let admin: AdminClient<DefaultClientContext> = client(&brokers).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = block_on(admin.create_topics(
        &[
            NewTopic::new(&input_topic, topic_partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&output_topic, topic_partitions, TopicReplication::Fixed(1)),
        ],
        &options,
    ))??;
    for result in created {
        result.map_err(|(topic, code)| anyhow!("cannot create topic {topic}: {code:?}"))?;
    }
    let input = dir.join("input");
    let corpus = Corpus::new(CorpusKind::Zipf, 1);
    progress(&format!("writing {lines} lines of text ({})", corpus.describe()));
    let stats = corpus.write_files(&input, lines, 250_000, partitions)?;
    progress(&format!("preloading {lines} lines into {input_topic}"));
    let load = preload(&brokers, &input_topic, &input)?;
    progress(&format!(
        "loaded in {:.1} s; running files -> files",
        load.as_secs_f64()
    ));
    let files = end_to_end::wordcount(weir, &input, plugin, partitions, &dir.join("files-run"))?;
    if files.counted != stats.words {
        bail!("the files run counted {} words of {}", files.counted, stats.words);
    }
    progress("running kafka -> kafka (exactly once)");
    let pipeline = dir.join("kafka.toml");
    std::fs::write(
        &pipeline,
        kafka_wordcount_toml(
            "bench-kafka",
            partitions,
            plugin,
            &brokers,
            &input_topic,
            &output_topic,
        ),
    )?;
    let log = dir.join("kafka-run.log");
    let broker_cpu_before = local.as_ref().and_then(|broker| cpu_of(broker.child.id()));
    let started = Instant::now();
    let child = Command::new(weir)
        .args(["run", "--available-now", "--workers"])
        .arg(partitions.to_string())
        .arg(&pipeline)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", weir.display()))?;
    let kafka = wait_measured(child, started)?;
    let broker_cpu = match (
        broker_cpu_before,
        local.as_ref().and_then(|b| cpu_of(b.child.id())),
    ) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    if kafka.exit_code != Some(0) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        bail!(
            "the Kafka run failed:\n{}",
            text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    progress("reading the counts back");
    let counted = sum_counts(&brokers, &output_topic)?;
    if counted != stats.words {
        bail!(
            "the Kafka run's counts add up to {counted}, not to the {} words produced",
            stats.words
        );
    }
    Ok(KafkaReport {
        corpus: stats,
        load,
        kafka,
        broker_cpu,
        files: files.usage,
        partitions: topic_partitions,
    })
}

/// The word count from `input_topic` to `output_topic` (exactly once) as
/// pipeline `name` with `partitions` partitions.
pub(super) fn kafka_wordcount_toml(
    name: &str,
    partitions: usize,
    plugin: &Path,
    brokers: &str,
    input_topic: &str,
    output_topic: &str,
) -> String {
    wordcount_toml_into(
        name,
        "1s",
        partitions,
        plugin,
        // noida-db answers a fetch with the rest of every partition,
        // whatever the fetch limits: librdkafka must accept a response as
        // large as the backlog (it refuses over 100 MB by default).
        &format!(
            "type = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = \"{input_topic}\"\nstart = \"earliest\"\n\
             properties = {{ \"receive.message.max.bytes\" = 2147483647 }}"
        ),
        &format!(
            "type = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{output_topic}\"\ndelivery = \"exactly-once\""
        ),
    )
}

/// Produces every line of the files in `input` to `topic`.
pub(super) fn preload(brokers: &str, topic: &str, input: &Path) -> anyhow::Result<Duration> {
    let producer: BaseProducer = client(brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?;
    let started = Instant::now();
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for file in files {
        let text = std::fs::read(&file)?;
        for line in text.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let mut record = BaseRecord::<(), [u8]>::to(topic).payload(line);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        producer.poll(Duration::from_millis(5));
                        record = back;
                    }
                    Err((error, _)) => bail!("cannot produce to {topic}: {error}"),
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(started.elapsed())
}

/// Adds up the counts (`word -> count` messages) of `topic`, read committed.
pub(super) fn sum_counts(brokers: &str, topic: &str) -> anyhow::Result<u64> {
    let mut total = 0u64;
    read_committed(brokers, topic, |message| {
        let value = std::str::from_utf8(message.payload().unwrap_or_default())?;
        total += value
            .parse::<u64>()
            .with_context(|| format!("not a count: {value:?}"))?;
        Ok(())
    })?;
    Ok(total)
}

/// Hands every committed message of `topic` to `each`, partition by
/// partition in offset order.
pub(super) fn read_committed(
    brokers: &str,
    topic: &str,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // The log context takes the ends of partitions (news here, which
    // librdkafka also reports as errors) for what they are.
    let consumer: BaseConsumer<weir::kafka::LogContext> = client(brokers)
        .set("group.id", "weir-bench-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("receive.message.max.bytes", "2147483647")
        .create_with_context(weir::kafka::LogContext {
            owner: "the benchmark's reader".to_owned(),
        })?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        list.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut ended = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ended.len() < partitions.len() {
        if Instant::now() > deadline {
            bail!("reading {topic} back took over 5 minutes");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                each(&message)?;
                ended.remove(&message.partition());
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
    }
    Ok(())
}

/// Runs an admin future to completion on a runtime of its own.
pub(super) fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}
