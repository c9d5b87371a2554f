//! `weir bench --suite cluster`: the word count as a cluster pipeline run
//! by 1, 2 and 3 `weir run` processes, on one machine next to the broker.
//!
//! The Zipf corpus is preloaded once into a 6-partition topic. For each
//! process count the same pipeline (`split-words`, then a count through a
//! repartition topic, exactly once to an output topic) starts as a new
//! cluster (its own group, checkpoints and topics); the run is timed from
//! the processes' spawn until the output's counts add up to every word,
//! then the processes are stopped with SIGTERM and their CPU time and
//! peak memory read. It also reports the repartition topic's traffic per
//! word. On one machine the processes share its cores with each other and
//! with the broker: the figures show the cost of scale-out, not its gain.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use super::corpus::{Corpus, CorpusKind, CorpusStats};
use super::kafka_bench::{
    block_on, client, kafka_wordcount_toml, preload, read_committed, start_broker, sum_counts,
};
use super::process::{ChildUsage, wait_measured};

/// Partitions of the input topic (and of the repartition topic).
const TOPIC_PARTITIONS: i32 = 6;

/// One cluster run.
#[derive(Debug, Clone)]
pub struct ClusterRun {
    /// Processes in the cluster.
    pub processes: usize,
    /// From spawn until the output counted every word.
    pub elapsed: Duration,
    /// Each process's CPU time and peak memory.
    pub usage: Vec<ChildUsage>,
    /// Records in the repartition topic.
    pub repartition_records: u64,
    /// Bytes (keys and values) in the repartition topic.
    pub repartition_bytes: u64,
    /// Kafka transactions the processes committed.
    pub transactions: u64,
    /// Task batches those transactions carried.
    pub task_batches: u64,
}

/// What the cluster benchmark measured.
#[derive(Debug, Clone)]
pub struct ClusterReport {
    /// The text.
    pub corpus: CorpusStats,
    /// One run per process count.
    pub runs: Vec<ClusterRun>,
}

/// Runs the benchmark over `lines` lines with 1..=`most` processes of
/// `weir` and the `split-words` component at `plugin`.
pub fn run(
    weir: &Path,
    plugin: &Path,
    lines: u64,
    most: usize,
    progress: impl Fn(&str),
) -> anyhow::Result<ClusterReport> {
    let scratch = tempfile::Builder::new().prefix("weir-cluster-bench-").tempdir()?;
    let dir = scratch.path();
    let broker = start_broker(dir)?;
    let brokers = broker.address.clone();
    let input_topic = "bench-cluster-lines";
    create_topic(&brokers, input_topic)?;
    let input = dir.join("input");
    let corpus = Corpus::new(CorpusKind::Zipf, 1);
    progress(&format!("writing {lines} lines of text ({})", corpus.describe()));
    let stats = corpus.write_files(&input, lines, 250_000, TOPIC_PARTITIONS as usize)?;
    progress(&format!("preloading {lines} lines into {input_topic}"));
    preload(&brokers, input_topic, &input)?;
    let mut runs = Vec::new();
    for processes in 1..=most {
        progress(&format!("{processes} process(es)"));
        runs.push(run_cluster(
            weir,
            plugin,
            dir,
            &brokers,
            input_topic,
            processes,
            stats.words,
        )?);
    }
    Ok(ClusterReport { corpus: stats, runs })
}

fn create_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(brokers).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = block_on(admin.create_topics(
        &[NewTopic::new(topic, TOPIC_PARTITIONS, TopicReplication::Fixed(1))],
        &options,
    ))??;
    for result in created {
        result.map_err(|(topic, code)| anyhow!("cannot create topic {topic}: {code:?}"))?;
    }
    Ok(())
}

fn run_cluster(
    weir: &Path,
    plugin: &Path,
    dir: &Path,
    brokers: &str,
    input_topic: &str,
    processes: usize,
    words: u64,
) -> anyhow::Result<ClusterRun> {
    let name = format!("bench-cluster-{processes}");
    let output_topic = format!("{name}-counts");
    create_topic(brokers, &output_topic)?;
    let checkpoints = dir.join(format!("{name}-checkpoints"));
    let pipeline = dir.join(format!("{name}.toml"));
    let text = kafka_wordcount_toml(&name, 2, plugin, brokers, input_topic, &output_topic);
    let text = text.replacen(
        "[pipeline]\n",
        &format!(
            "[pipeline]\ncheckpoint-dir = {:?}\n",
            checkpoints.display().to_string()
        ),
        1,
    );
    std::fs::write(
        &pipeline,
        format!("{text}\n[cluster]\ngroup-id = \"{name}\"\nsession-timeout = \"10s\"\n"),
    )?;
    let started = Instant::now();
    let mut waiters = Vec::new();
    let mut pids = Vec::new();
    for index in 0..processes {
        let log = dir.join(format!("{name}-{index}.log"));
        let child = Command::new(weir)
            .arg("run")
            .arg(&pipeline)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", weir.display()))?;
        pids.push(child.id());
        waiters.push(std::thread::spawn(move || wait_measured(child, started)));
    }
    let deadline = started + Duration::from_secs(1800);
    let elapsed = loop {
        std::thread::sleep(Duration::from_millis(500));
        if sum_counts(brokers, &output_topic)? >= words {
            break started.elapsed();
        }
        if waiters.iter().any(|waiter| waiter.is_finished()) || Instant::now() > deadline {
            for pid in &pids {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
            let log = std::fs::read_to_string(dir.join(format!("{name}-0.log"))).unwrap_or_default();
            bail!(
                "the {processes}-process cluster stopped or took too long:\n{}",
                log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
        }
    };
    for pid in &pids {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
    }
    let mut usage = Vec::new();
    for waiter in waiters {
        usage.push(waiter.join().map_err(|_| anyhow!("a waiter panicked"))??);
    }
    let counted = sum_counts(brokers, &output_topic)?;
    if counted != words {
        bail!("the {processes}-process cluster counted {counted} words of {words}");
    }
    let (repartition_records, repartition_bytes) = traffic(brokers, &format!("weir.{name}.counts.words"))?;
    let (mut transactions, mut task_batches) = (0, 0);
    for index in 0..processes {
        let log = std::fs::read_to_string(dir.join(format!("{name}-{index}.log")))?;
        let (committed, carried) = transaction_counts(&log).ok_or_else(|| {
            anyhow!("process {index} of the {processes}-process cluster did not say its transactions")
        })?;
        transactions += committed;
        task_batches += carried;
    }
    Ok(ClusterRun {
        processes,
        elapsed,
        usage,
        repartition_records,
        repartition_bytes,
        transactions,
        task_batches,
    })
}

/// The transactions a member's log says it committed, and the task batches
/// they carried (its last line: `… N Kafka transaction(s) carried M task
/// batch(es) …`).
fn transaction_counts(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("Kafka transaction(s) carried"))?;
    let tail = line.rsplit("; ").next()?;
    let mut numbers = tail
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse().ok());
    Some((numbers.next()?, numbers.next()?))
}

/// Committed records of `topic` and their key and value bytes.
fn traffic(brokers: &str, topic: &str) -> anyhow::Result<(u64, u64)> {
    let (mut records, mut bytes) = (0u64, 0u64);
    read_committed(brokers, topic, |message| {
        records += 1;
        bytes += (message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len)) as u64;
        Ok(())
    })?;
    Ok((records, bytes))
}
