//! The Kafka source and sink against a real Kafka-protocol broker (one per
//! test, see `weir_tests::kafka`): word counts from a topic to a topic
//! compared with an independent count, exactly-once output under repeated
//! kill -9, deterministic batches, partitions added while running, and the
//! failures a user meets (no broker, an unknown topic, bad properties, the
//! broker killed mid-run, a record too large), and runs of one exactly-once
//! sink fencing each other.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use weir_tests::kafka::{Broker, Received};
use weir_tests::{plugins, sample_text, scratch, sink_lines, stderr, word_counts, write_pipeline};

use super::recovery::run_with_crashes;
use super::{LIMIT, run_file_ok, weir};

/// A word count from `input` to `output` through Kafka. `source_extra` and
/// `sink_extra` are more keys of the source and sink tables.
fn kafka_wordcount(broker: &Broker, dir: &Path, source_extra: &str, sink_extra: &str) -> String {
    let brokers = broker.address();
    let source = format!(
        "type = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = \"input\"\nstart = \"earliest\"\n{source_extra}"
    );
    let sink = format!(
        "[[sink]]\nname = \"out\"\ninput = \"counts\"\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"counts\"\n{sink_extra}\n"
    );
    weir_tests::wordcount(dir, "kafka-wordcount", true, "", &source, &sink)
}

/// Starts a streaming `weir run FILE` whose log, at `level`, goes to `log`.
fn start_logged(file: &Path, level: &str, log: &Path) -> std::process::Child {
    weir()
        .command(&["run", file.to_str().unwrap()])
        .env("WEIR_LOG", level)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Sums `word -> count` records read back from Kafka.
fn summed(records: &[Received]) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for record in records {
        let word = record.key.clone().expect("a count has its word as key");
        *totals.entry(word).or_insert(0) += record.value.parse::<u64>().expect("a count");
    }
    totals
}

/// Input lines: `lines` lines of sample text.
fn input_lines(lines: usize, seed: u64) -> Vec<String> {
    sample_text(lines, seed).lines().map(str::to_owned).collect()
}

#[test]
fn kafka_to_kafka_word_count_matches_an_independent_count() {
    let broker = Broker::start();
    broker.create_topic("input", 3);
    broker.create_topic("counts", 2);
    let lines = input_lines(3000, 7);
    broker.produce("input", &lines);
    let dir = scratch();
    let file = write_pipeline(
        dir.path(),
        "kafka.toml",
        &kafka_wordcount(&broker, dir.path(), "", "delivery = \"exactly-once\""),
    );
    let log = run_file_ok(&file);
    let expected = word_counts(&lines.join("\n"));
    let output = broker.read_committed("counts");
    assert_eq!(summed(&output), expected, "{log}");
    // The source's offsets were committed to its group with the output.
    let mut ends = vec![Some(0i64); 3];
    for record in broker.read_committed("input") {
        ends[record.partition as usize] = Some(record.offset + 1);
    }
    assert_eq!(broker.committed("weir.kafka-wordcount.lines", "input", 3), ends);
    // A second run finds everything read and committed: nothing new.
    run_file_ok(&file);
    assert_eq!(summed(&broker.read_committed("counts")), expected);
    // A new checkpoint directory with the same transactional id: the sink
    // refuses to start rather than skip "committed" batches it never ran.
    let other = std::fs::read_to_string(&file)
        .unwrap()
        .replace("checkpoints", "other-checkpoints");
    let other = write_pipeline(dir.path(), "other.toml", &other);
    let output = weir().run(&["run", "--available-now", other.to_str().unwrap()], LIMIT);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("another checkpoint directory or pipeline used the same id"),
        "{log}"
    );
    assert_eq!(summed(&broker.read_committed("counts")), expected);
}

#[test]
fn killed_kafka_pipelines_commit_every_count_exactly_once() {
    let broker = Broker::start();
    broker.create_topic("input", 3);
    broker.create_topic("counts", 2);
    let lines = input_lines(36_000, 11);
    broker.produce("input", &lines);
    let dir = scratch();
    // Slow enough that a run takes several batches (a kill lands inside).
    let file = write_pipeline(
        dir.path(),
        "kafka.toml",
        &kafka_wordcount(
            &broker,
            dir.path(),
            "max-rate-per-partition = 1000",
            "delivery = \"exactly-once\"",
        ),
    );
    let mut rng = super::recovery::Rng(0x5eed_cafe);
    let mut points = Vec::new();
    for _ in 0..3 {
        points.push(format!("kafka-sent:{}", 1 + rng.below(4)));
        points.push(format!("kafka-committed:{}", 1 + rng.below(4)));
        points.push(format!("batch-logged:{}", 2 + rng.below(4)));
    }
    points.push("checkpoint-done:1".to_owned());
    let crashes = run_with_crashes(&file, &points, 12, 77);
    let expected = word_counts(&lines.join("\n"));
    let output = broker.read_committed("counts");
    assert_eq!(summed(&output), expected, "after {crashes:?}");
    assert!(crashes.kills >= 20, "only {} kills: {crashes:?}", crashes.kills);

    // A reader that comes in after a crashed run's aborted transaction
    // sees from there what one that read from the start saw.
    let starts = after_last_abort(&output);
    assert!(
        !starts.is_empty(),
        "no aborted transaction in the output after {crashes:?}"
    );
    let late = broker.read_committed_from("counts", &starts);
    let from_the_start: Vec<Received> = output
        .iter()
        .filter(|r| starts.get(&r.partition).is_some_and(|&start| r.offset >= start))
        .cloned()
        .collect();
    assert_eq!(late.len(), from_the_start.len(), "read from {starts:?}");
    assert_eq!(late, from_the_start, "read from {starts:?}");
}

/// Per partition of `records` (committed records in offset order), the
/// offset of the first record after the last aborted transaction: where two
/// committed records are more than a commit marker apart, records and an
/// abort marker lie between them. Partitions with none are left out.
fn after_last_abort(records: &[Received]) -> BTreeMap<i32, i64> {
    let mut starts = BTreeMap::new();
    let mut previous: Option<(i32, i64)> = None;
    for record in records {
        let before = match previous {
            Some((partition, offset)) if partition == record.partition => offset,
            _ => -1,
        };
        if record.offset - before > 2 {
            starts.insert(record.partition, record.offset);
        }
        previous = Some((record.partition, record.offset));
    }
    starts
}

#[test]
fn deterministic_batches_take_records_per_batch_of_every_partition() {
    let broker = Broker::start();
    broker.create_topic("input", 2);
    let lines: Vec<String> = (0..24).map(|i| format!("w{i}")).collect();
    broker.produce("input", &lines);
    let dir = scratch();
    let out = dir.path().join("out");
    let pipeline = format!(
        r#"
[pipeline]
name = "deterministic-kafka"
batch-interval = "1s"
clock = "deterministic"

[plugins]
split-words = {split:?}

[[source]]
name = "lines"
type = "kafka"
brokers = "{brokers}"
topics = ["input"]
start = "earliest"
records-per-batch = 5

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[sink]]
input = "words"
type = "files"
format = "jsonl"
path = {out:?}
"#,
        split = plugins::SPLIT_WORDS,
        brokers = broker.address(),
        out = out.display().to_string(),
    );
    let file = write_pipeline(dir.path(), "p.toml", &pipeline);
    run_file_ok(&file);
    let by_partition = {
        let read = broker.read_committed("input");
        let mut map: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for r in read {
            map.entry(r.partition).or_default().push(r.value);
        }
        map
    };
    // Batch k: records 5k..5k+5 of partition 0, then of partition 1.
    let mut expected: Vec<(u64, Vec<String>)> = Vec::new();
    for k in 0.. {
        let mut batch = Vec::new();
        for values in by_partition.values() {
            batch.extend(values.iter().skip(5 * k).take(5).cloned());
        }
        if batch.is_empty() {
            break;
        }
        expected.push((k as u64, batch));
    }
    let mut actual: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (batch, line) in sink_lines(&out) {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        actual
            .entry(batch)
            .or_default()
            .push(value["value"].as_str().unwrap().to_owned());
        assert_eq!(
            value["timestamp"].as_i64().unwrap() % 1000,
            0,
            "batch time stamps: {line}"
        );
    }
    let expected: BTreeMap<u64, Vec<String>> = expected.into_iter().collect();
    assert_eq!(actual, expected);
    // The group's offsets include the run's last batches.
    let ends: Vec<Option<i64>> = by_partition
        .values()
        .map(|values| Some(values.len() as i64))
        .collect();
    assert_eq!(
        broker.committed("weir.deterministic-kafka.lines", "input", 2),
        ends
    );
}

#[test]
fn a_missing_broker_or_topic_is_a_clear_error_after_give_up_after() {
    let port = weir_tests::free_port();
    let dir = scratch();
    let pipeline = |brokers: &str| {
        format!(
            r#"
[pipeline]
name = "no-broker"
batch-interval = "100ms"

[[source]]
name = "lines"
type = "kafka"
brokers = "{brokers}"
topics = "input"
give-up-after = "4s"

[[sink]]
input = "lines"
type = "console"
"#
        )
    };
    let run = |text: &str| {
        let file = write_pipeline(dir.path(), "p.toml", text);
        let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
        let log = stderr(&output);
        assert!(!output.status.success(), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        log
    };
    // Nobody listens: retried with a warning each time, then a clear error.
    let log = run(&pipeline(&format!("127.0.0.1:{port}")));
    assert!(log.contains("cannot reach the Kafka brokers"), "{log}");
    assert!(log.contains("retrying in"), "{log}");
    assert!(log.contains("gave up after 4s"), "{log}");
    // An unknown topic: the same policy, with what is wrong.
    let broker = Broker::start();
    let log = run(&pipeline(&broker.address()));
    assert!(log.contains("topic `input` does not exist"), "{log}");
    assert!(log.contains("gave up after 4s"), "{log}");
}

#[test]
fn a_broker_that_starts_late_is_waited_for() {
    let port = weir_tests::free_port();
    let dir = scratch();
    let out = dir.path().join("out");
    let pipeline = format!(
        r#"
[pipeline]
name = "late-broker"
batch-interval = "100ms"

[[source]]
name = "lines"
type = "kafka"
brokers = "127.0.0.1:{port}"
topics = "input"
start = "earliest"

[[sink]]
input = "lines"
type = "files"
path = {out:?}
"#,
        out = out.display().to_string(),
    );
    let file = write_pipeline(dir.path(), "p.toml", &pipeline);
    let log = dir.path().join("weir.log");
    let mut child = start_logged(&file, "warn", &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    std::thread::sleep(Duration::from_secs(2));
    let broker = Broker::start_on(port);
    broker.create_topic("input", 2);
    let lines = input_lines(200, 5);
    broker.produce("input", &lines);
    let deadline = Instant::now() + LIMIT;
    let mut expected = lines.clone();
    expected.sort();
    loop {
        let mut got: Vec<String> = sink_lines(&out).into_iter().map(|(_, line)| line).collect();
        got.sort();
        if got == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "got {} of {} lines; log:\n{}",
            got.len(),
            expected.len(),
            read_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // After the batches committed, the source commits their offsets to its
    // group (for lag monitoring).
    let mut ends = vec![Some(0i64); 2];
    for record in broker.read_committed("input") {
        ends[record.partition as usize] = Some(record.offset + 1);
    }
    while broker.committed("weir.late-broker.lines", "input", 2) != ends {
        assert!(
            Instant::now() < deadline,
            "offsets never committed; log:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    weir_tests::terminate(&child);
    assert!(
        weir_tests::wait_status(&mut child, LIMIT).success(),
        "{}",
        read_log()
    );
    let log = read_log();
    assert!(log.contains("Connection refused"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn bad_kafka_settings_are_refused_before_the_run_with_the_reason() {
    let dir = scratch();
    let cases = [
        (
            r#"properties = { "no.such.property" = "1" }"#,
            "invalid Kafka client properties of a `kafka` source",
        ),
        (
            r#"properties = { "enable.auto.commit" = "true" }"#,
            "property `enable.auto.commit` cannot be set here: Weir commits offsets itself",
        ),
        (
            r#"start = "middle""#,
            "`start` must be \"earliest\", \"latest\" or a table",
        ),
        (r#"start = { "input" = 3 }"#, "`start` must be"),
    ];
    for (extra, expected) in cases {
        let pipeline = format!(
            "[pipeline]\nname = \"bad\"\nbatch-interval = \"1s\"\n\n[[source]]\nname = \"lines\"\ntype = \"kafka\"\n\
             brokers = \"127.0.0.1:1\"\ntopics = \"input\"\n{extra}\n\n[[sink]]\ninput = \"lines\"\ntype = \"console\"\n"
        );
        let file = write_pipeline(dir.path(), "bad.toml", &pipeline);
        let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
        let log = stderr(&output);
        assert!(!output.status.success(), "{extra}: {log}");
        assert!(
            log.contains(expected),
            "{extra}: expected {expected:?} in:\n{log}"
        );
    }
    let sink = "[pipeline]\nname = \"bad\"\nbatch-interval = \"1s\"\n\n[[source]]\nname = \"lines\"\ntype = \"generator\"\nlines = 1\n\n\
                [[sink]]\ninput = \"lines\"\ntype = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopic = \"out\"\non-error = \"dead-letter\"\n";
    let file = write_pipeline(dir.path(), "sink.toml", sink);
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    assert!(
        stderr(&output).contains("on-error = \"dead-letter\" needs `dead-letter-topic`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_record_too_large_for_the_topic_goes_to_the_dead_letter_topic() {
    let broker = Broker::start();
    broker.create_topic("out", 1);
    broker.create_topic("rejected", 1);
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let big = "x".repeat(5000);
    std::fs::write(input.join("a.txt"), format!("small one\n{big}\nsmall two\n")).unwrap();
    let pipeline = format!(
        r#"
[pipeline]
name = "dead-letters"
batch-interval = "100ms"

[[source]]
name = "lines"
type = "files"
path = {input:?}

[[sink]]
input = "lines"
type = "kafka"
brokers = "{brokers}"
topic = "out"
on-error = "dead-letter"
dead-letter-topic = "rejected"
properties = {{ "message.max.bytes" = 2000 }}
"#,
        input = input.display().to_string(),
        brokers = broker.address(),
    );
    let file = write_pipeline(dir.path(), "p.toml", &pipeline);
    let log = run_file_ok(&file);
    let out: Vec<String> = broker
        .read_committed("out")
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(out, ["small one", "small two"], "{log}");
    let rejected = broker.read_committed("rejected");
    assert_eq!(rejected.len(), 1, "{log}");
    let letter: serde_json::Value = serde_json::from_str(&rejected[0].value).unwrap();
    assert_eq!(letter["size"], 5000);
    assert_eq!(letter["value"].as_str().unwrap().len(), 1024);
    assert!(
        letter["error"].as_str().unwrap().contains("too large"),
        "{letter}"
    );
}

#[test]
fn partitions_added_while_running_are_read_and_a_broker_outage_loses_nothing() {
    let mut broker = Broker::start();
    broker.create_topic("input", 1);
    broker.create_topic("counts", 1);
    let dir = scratch();
    let file = write_pipeline(
        dir.path(),
        "kafka.toml",
        &kafka_wordcount(
            &broker,
            dir.path(),
            "discovery-interval = \"300ms\"\ngive-up-after = \"2m\"",
            "delivery = \"exactly-once\"",
        ),
    );
    let log = dir.path().join("weir.log");
    let mut child = start_logged(&file, "info", &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let first = input_lines(500, 1);
    broker.produce("input", &first);
    let mut all = first.clone();
    let wait_for = |expected: &BTreeMap<String, u64>, broker: &Broker, what: &str| {
        let deadline = Instant::now() + LIMIT;
        loop {
            let counts = summed(&broker.read_committed("counts"));
            if &counts == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: counts never matched; log:\n{}",
                read_log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    wait_for(&word_counts(&all.join("\n")), &broker, "one partition");
    broker.add_partitions("input", 3);
    std::thread::sleep(Duration::from_secs(1));
    let second = input_lines(500, 2);
    broker.produce("input", &second);
    all.extend(second);
    wait_for(&word_counts(&all.join("\n")), &broker, "with added partitions");
    assert!(read_log().contains("new partition(s) found"), "{}", read_log());

    // The broker goes away for a while and comes back with its data: the
    // pipeline waits, then goes on; nothing is lost or counted twice.
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    let third = input_lines(500, 3);
    broker.produce("input", &third);
    all.extend(third);
    wait_for(
        &word_counts(&all.join("\n")),
        &broker,
        "after the broker came back",
    );
    weir_tests::terminate(&child);
    let status = weir_tests::wait_status(&mut child, LIMIT);
    assert!(status.success(), "{}", read_log());
    assert!(!read_log().contains("panicked"), "{}", read_log());
}

#[test]
fn the_kafka_example_runs_as_the_readme_shows_it() {
    // Runs twice at most: in about 1 of 20 runs here (2026-12-02) the test
    // broker (noida-db 0.2.3) returned no record of `page-counts`, not even
    // to a read_uncommitted consumer, although it had acknowledged every
    // record and committed every transaction of the run (a delivery or
    // commit error fails the run), whether the topic was created on first
    // use or beforehand. Both runs must fail for the test to fail.
    for attempt in 1..=2 {
        if kafka_example_run(attempt == 2) {
            return;
        }
        eprintln!(
            "attempt {attempt}: the broker returned no `page-counts` record; trying again on a new broker"
        );
    }
}

/// One run of the Kafka example on a new broker; false when the broker
/// returned no output record and `last` is false.
fn kafka_example_run(last: bool) -> bool {
    let broker = Broker::start();
    let dir = scratch();
    let runnable =
        |example: &str| super::examples::runnable(example).replace("localhost:9092", &broker.address());
    // Load the clicks with Weir itself (the topics are created on first use).
    let load = write_pipeline(
        dir.path(),
        "clicks-to-kafka.toml",
        &runnable("clicks-to-kafka.toml"),
    );
    run_file_ok(&load);
    let file = write_pipeline(dir.path(), "kafka-clicks.toml", &runnable("kafka-clicks.toml"));
    let output = weir().run(&["run", file.to_str().unwrap(), "--available-now"], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = weir_tests::stdout(&output);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/kafka-clicks.txt");
    if std::env::var_os("WEIR_BLESS").is_some() {
        std::fs::write(&golden, &printed).unwrap();
    }
    let expected = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (run with WEIR_BLESS=1 to create it)", golden.display()));
    assert_eq!(
        printed,
        expected,
        "the console output differs from {}",
        golden.display()
    );
    // What went to Kafka is what the console printed for `per-page`.
    let sent = broker.read_committed("page-counts");
    if sent.is_empty() && !last {
        return false;
    }
    assert!(!sent.is_empty());
    for record in sent {
        let object: serde_json::Value = serde_json::from_str(&record.value).unwrap();
        let page = object["key"].as_str().unwrap();
        let count = object["value"].as_str().unwrap();
        let start = object["window"]["start"].as_i64().unwrap();
        assert_eq!(object["window"]["end"].as_i64().unwrap() - start, 10_000);
        let line = format!("{page}\t{count}\t[1970-01-01T00:00:{:02}.000Z", start / 1000);
        assert!(printed.contains(&line), "{line:?} not printed:\n{printed}");
    }
    true
}

#[test]
fn a_killed_broker_stops_the_pipeline_with_a_clear_error() {
    let mut broker = Broker::start();
    broker.create_topic("input", 2);
    broker.create_topic("counts", 1);
    let dir = scratch();
    let file = write_pipeline(
        dir.path(),
        "kafka.toml",
        &kafka_wordcount(
            &broker,
            dir.path(),
            "discovery-interval = \"200ms\"\ngive-up-after = \"3s\"",
            "delivery = \"exactly-once\"\ntimeout = \"3s\"",
        ),
    );
    let log = dir.path().join("weir.log");
    let mut child = start_logged(&file, "warn", &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let lines = input_lines(300, 9);
    broker.produce("input", &lines);
    let expected = word_counts(&lines.join("\n"));
    let deadline = Instant::now() + LIMIT;
    while summed(&broker.read_committed("counts")) != expected {
        assert!(
            Instant::now() < deadline,
            "counts never matched; log:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGKILL: the broker is gone for good.
    broker.kill();
    let status = weir_tests::wait_status(&mut child, LIMIT);
    let log = read_log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("cannot reach the Kafka brokers"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Whichever noticed first stops the pipeline: the source giving up, or
    // the sink unable to commit a batch.
    let error = log
        .lines()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(
        error.contains("source `lines`: cannot reach the Kafka brokers")
            && error.contains("gave up after 3s")
            || error.contains("sink `out`: batch"),
        "{error}"
    );
    // Every batch it ran is in its batch log, for a restart against a
    // broker that kept its data.
    assert!(
        dir.path()
            .join("checkpoints")
            .join("offsets")
            .read_dir()
            .unwrap()
            .count()
            > 0
    );
}

/// Backpressure with a Kafka source: a producer offers about 3 times what
/// the `busy` stage processes (30,000 lines/s, one in ten costing 1 ms:
/// about 10,000/s at most); the PID rate estimator brings the batches'
/// processing time to the interval, batches to a fraction of what is
/// offered (15,000 lines an interval), and memory stays bounded.
#[test]
fn backpressure_holds_a_kafka_source_to_what_the_pipeline_processes() {
    // Counts batches in a fixed time: not beside the cluster tests' processes.
    let _cpu = super::cpu_heavy();
    use super::rate::{logged_batches, median, memory_of};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let broker = Broker::start();
    broker.create_topic("input", 2);
    let dir = scratch();
    let pipeline = format!(
        r#"
[pipeline]
name = "kafka-overload"
batch-interval = "500ms"
partitions = 1

[plugins]
busy = {busy:?}

[[source]]
name = "lines"
type = "kafka"
brokers = "{brokers}"
topics = "input"
backpressure = true

[[stage]]
name = "slow"
input = "lines"
op = "map"
plugin = "busy"
limits = {{ timeout = "10s" }}

[[sink]]
input = "slow"
type = "files"
path = {out:?}
"#,
        busy = plugins::BUSY,
        brokers = broker.address(),
        out = dir.path().join("out").display().to_string(),
    );
    let file = write_pipeline(dir.path(), "overload.toml", &pipeline);
    let child = weir()
        .command(&["run", file.to_str().unwrap()])
        .env("WEIR_LOG", "warn,weir::pipeline::runner=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Start producing once the source reads (it starts at the latest offset).
    std::thread::sleep(Duration::from_secs(2));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        let producer = broker.producer();
        std::thread::spawn(move || {
            use rdkafka::producer::{BaseRecord, Producer};
            // 300 lines every 10 ms: 30,000 lines/s.
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                for i in 0..300 {
                    let value = if i % 10 == 9 { "1" } else { "0" };
                    let _ = producer.send(BaseRecord::<(), str>::to("input").payload(value));
                }
                producer.poll(Duration::ZERO);
                next += Duration::from_millis(10);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            let _ = producer.flush(Duration::from_secs(10));
        })
    };
    let mut peak_rss = 0;
    let until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        peak_rss = peak_rss.max(memory_of(child.id()).0);
    }
    weir_tests::terminate(&child);
    stop.store(true, Ordering::Relaxed);
    let output = weir_tests::wait_output(child, LIMIT);
    feeder.join().unwrap();
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    let batches = logged_batches(&log);
    assert!(batches.len() >= 12 + 8 + 3, "{batches:?}\n{log}");
    let steady = &batches[12..batches.len() - 3];
    let times: Vec<f64> = steady.iter().map(|&(_, ms)| ms).collect();
    let typical = median(times.clone());
    // Spark's estimator settles processing time at the interval; on a
    // loaded machine (the suite runs tests side by side) within two. The
    // unpaced start took seconds per batch.
    assert!(
        typical <= 1_000.0,
        "median processing time {typical} ms: {batches:?}"
    );
    let records = median(steady.iter().map(|&(records, _)| records as f64).collect());
    assert!(
        records <= 9_000.0,
        "median batch of {records} records: {batches:?}"
    );
    assert!(peak_rss < 256 << 20, "peak RSS {} MB", peak_rss >> 20);
    assert!(log.contains("backpressure set it"), "{log}");
}

/// A first run with a checkpoint directory starts where `start` says (the
/// default, `latest`): what the topic held before is not read.
#[test]
fn a_first_checkpointed_run_starts_at_the_latest_offset() {
    let broker = Broker::start();
    broker.create_topic("input", 2);
    broker.create_topic("counts", 1);
    broker.produce("input", &input_lines(200, 21));
    let dir = scratch();
    let text = kafka_wordcount(&broker, dir.path(), "", "delivery = \"exactly-once\"")
        .replace("start = \"earliest\"\n", "");
    let file = write_pipeline(dir.path(), "kafka.toml", &text);
    let log = dir.path().join("weir.log");
    let mut child = start_logged(&file, "info", &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + LIMIT;
    while !read_log().contains("reading input/1 from offset") {
        assert!(Instant::now() < deadline, "{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let new = input_lines(100, 22);
    broker.produce("input", &new);
    let expected = word_counts(&new.join("\n"));
    while summed(&broker.read_committed("counts")) != expected {
        assert!(
            Instant::now() < deadline,
            "counts never matched; log:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    weir_tests::terminate(&child);
    assert!(
        weir_tests::wait_status(&mut child, LIMIT).success(),
        "{}",
        read_log()
    );
    assert!(!read_log().contains("from offset 0"), "{}", read_log());
}

/// `--available-now` reads what the topic held when the run started, even
/// while a producer keeps writing (it would never reach the end otherwise);
/// the next run goes on from there.
/// A run without checkpoints starts from the source's committed offsets,
/// so only the last sink may commit them with its output: an exactly-once
/// Kafka sink before another sink that did would move the group past a
/// batch the other sink never wrote, and a crash between the two would
/// lose it there.
#[test]
fn without_checkpoints_only_the_last_sink_commits_the_source_offsets() {
    let broker = Broker::start();
    broker.create_topic("input", 2);
    broker.create_topic("counts", 1);
    broker.create_topic("copy", 1);
    let lines = input_lines(3000, 53);
    broker.produce("input", &lines);
    let dir = scratch();
    let brokers = broker.address();
    // At most 150 lines a partition per 100 ms batch: ten batches or more.
    let source = format!(
        "type = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = \"input\"\nstart = \"earliest\"\n\
         max-rate-per-partition = 1500\n"
    );
    let sinks = format!(
        "[[sink]]\nname = \"out\"\ninput = \"counts\"\ntype = \"kafka\"\nbrokers = \"{brokers}\"\n\
         topic = \"counts\"\ndelivery = \"exactly-once\"\n\n\
         [[sink]]\nname = \"copy\"\ninput = \"counts\"\ntype = \"kafka\"\nbrokers = \"{brokers}\"\n\
         topic = \"copy\"\n"
    );
    let text = weir_tests::wordcount(dir.path(), "two-sinks", false, "", &source, &sinks);
    let file = write_pipeline(dir.path(), "kafka.toml", &text);
    // Killed right after the Kafka sink committed its third transaction,
    // before the second sink wrote that batch.
    let crashed = weir()
        .command(&["run", "--available-now", file.to_str().unwrap()])
        .env("WEIR_CRASH_AT", "kafka-committed:3")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "{}", stderr(&crashed));
    assert!(!broker.read_committed("counts").is_empty());
    // The next run reads that batch again: the second sink gets every
    // count (at least once: a batch before it may come twice).
    let log = run_file_ok(&file);
    let copied = summed(&broker.read_committed("copy"));
    for (word, count) in word_counts(&lines.join("\n")) {
        let got = copied.get(&word).copied().unwrap_or(0);
        assert!(got >= count, "`{word}`: {got} of {count} in `copy`\n{log}");
    }
}

#[test]
fn available_now_stops_at_the_end_the_topic_had_when_the_run_started() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let broker = Broker::start();
    broker.create_topic("input", 2);
    broker.create_topic("counts", 1);
    let first = input_lines(2000, 31);
    broker.produce("input", &first);
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (stop, produced) = (stop.clone(), produced.clone());
        let producer = broker.producer();
        std::thread::spawn(move || {
            use rdkafka::producer::{BaseRecord, Producer};
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    let _ = producer.send(BaseRecord::<(), str>::to("input").payload("more"));
                }
                produced.fetch_add(100, Ordering::Relaxed);
                producer.poll(Duration::from_millis(5));
            }
            let _ = producer.flush(Duration::from_secs(10));
        })
    };
    let dir = scratch();
    let file = write_pipeline(
        dir.path(),
        "kafka.toml",
        &kafka_wordcount(
            &broker,
            dir.path(),
            "max-rate-per-partition = 2000",
            "delivery = \"exactly-once\"",
        ),
    );
    let log = run_file_ok(&file);
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    assert!(produced.load(Ordering::Relaxed) > 0);
    let counts = summed(&broker.read_committed("counts"));
    // Everything the topic held at the start was read, and the run ended
    // although records kept coming (read at most 2,000 a second).
    for (word, count) in word_counts(&first.join("\n")) {
        assert_eq!(counts.get(&word), Some(&count), "{word}: {log}");
    }
    // A second run reads on from there: in the end every record once.
    run_file_ok(&file);
    let all = broker.read_committed("input");
    let expected = word_counts(
        &all.iter()
            .map(|r| r.value.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_eq!(summed(&broker.read_committed("counts")), expected);
}

#[test]
fn a_source_held_back_or_stopped_now_keeps_its_group_at_the_last_batch_that_committed() {
    use weir::engine::{Engine, EngineOptions};
    use weir::pipeline::{RunOptions, StopMode};

    let broker = Broker::start();
    broker.create_topic("input", 1);
    // Each record keeps its plugin call busy for 2 ms, a batch gathers at
    // most 2 KiB, and the source may queue one chunk of 50 records: the
    // source spends the run blocked on its full queue, as it is when the
    // stop comes. (Not blocked, it commits each
    // batch to the group on its own, asynchronously, between reads.)
    let records = vec!["2".to_owned(); 6_000];
    broker.produce("input", &records);
    let dir = scratch();
    let out = dir.path().join("out");
    let pipeline = format!(
        r#"
[pipeline]
name = "stop-now"
batch-interval = "100ms"
chunk-records = 50
queue-chunks = 1
max-batch-memory = "2KiB"

[plugins]
busy = {busy:?}

[[source]]
name = "records"
type = "kafka"
brokers = "{brokers}"
topics = "input"
group-id = "stop-now-group"
start = "earliest"

[[stage]]
name = "slept"
input = "records"
op = "map"
plugin = "busy"

[[sink]]
input = "slept"
type = "files"
path = {out:?}
"#,
        busy = plugins::BUSY,
        brokers = broker.address(),
        out = out.display().to_string(),
    );
    let engine = Engine::new(EngineOptions {
        cache_dir: Some(weir_tests::component_cache()),
        workers: Some(2),
        ..EngineOptions::default()
    })
    .expect("the engine starts");
    let prepared = engine
        .prepare(&pipeline, Path::new("stop-now.toml"))
        .expect("the pipeline is valid");
    let handle = engine.start(prepared, RunOptions::default()).expect("it starts");
    let deadline = Instant::now() + LIMIT;
    while sink_lines(&out).len() < 200 {
        assert!(
            Instant::now() < deadline,
            "no output from the Kafka source: {:?}",
            handle.status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Held back by its full queue, the source still tells the group of
    // every batch that commits (lag monitoring under backpressure): the
    // group moves within a few batches of the sink, not only when the
    // source gets back to reading (every 4,096 records of a partition).
    loop {
        let committed = broker.committed("stop-now-group", "input", 1);
        if committed[0] >= Some(100) {
            break;
        }
        let written = sink_lines(&out).len();
        assert!(
            written < 2_000 && Instant::now() < deadline,
            "the group stays at {committed:?} while the sink wrote {written} records; {:?}",
            handle.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.stop(StopMode::Now);
    handle.wait().expect("the run ends without an error");
    let written = sink_lines(&out).len();
    assert!(
        written < records.len(),
        "the stop came after the whole topic was read"
    );
    // Every record the sink wrote, and no other, is behind the group's
    // offset (one partition, offsets from 0 without gaps).
    loop {
        let committed = broker.committed("stop-now-group", "input", 1);
        if committed == [Some(written as i64)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group is at {committed:?}, the sink wrote {written} records"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The exactly-once sink itself, in this process, against the broker: a
/// run that opens fences the run before it (whose next batch fails as
/// superseded, nothing of it committed), goes on after the last batch the
/// other committed, and of runs that open at the same moment exactly one
/// can write afterwards.
/// Opens three runs of a sink at once (`open`), then has each write
/// `batch` (`records` of the run's index): exactly one may write, the
/// others must end superseded, at open or at the write. Returns the index
/// of the one that wrote.
pub(super) fn one_of_three_opened_at_once_writes(
    open: impl Fn() -> Result<Box<dyn weir::sink::Sink>, weir::sink::SinkError> + Sync,
    batch: weir::sink::BatchInfo,
    records: impl Fn(usize) -> Vec<weir::record::Partition>,
) -> usize {
    let opened: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3).map(|_| scope.spawn(&open)).collect();
        runs.into_iter()
            .map(|run| run.join().expect("no panic"))
            .collect()
    });
    let mut wrote = Vec::new();
    for (index, run) in opened.into_iter().enumerate() {
        match run {
            Ok(mut sink) => match sink.write(batch, &records(index)) {
                Ok(()) => wrote.push(index),
                Err(error) => assert!(error.superseded, "run {index}: {error:?}"),
            },
            Err(error) => assert!(error.superseded, "run {index} at open: {error:?}"),
        }
    }
    assert_eq!(wrote.len(), 1, "runs that could write: {wrote:?}");
    wrote[0]
}

#[test]
fn runs_of_one_exactly_once_sink_fence_the_runs_before_them() {
    use weir::record::Batch;
    use weir::sink::{BatchInfo, Sink, SinkContext};

    let broker = Broker::start();
    broker.create_topic("counts", 1);
    let text = format!(
        "[pipeline]\nname = \"fencing\"\n\n[[source]]\nname = \"lines\"\ntype = \"socket\"\naddress = \"127.0.0.1:9\"\n\n\
         [[sink]]\nname = \"out\"\ninput = \"lines\"\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"counts\"\n\
         delivery = \"exactly-once\"\ntimeout = \"20s\"\n",
        broker.address()
    );
    let spec = weir::config::parse(&text, Path::new("fencing.toml")).expect("a valid pipeline");
    let open = || -> Result<Box<dyn Sink>, weir::sink::SinkError> {
        let cx = SinkContext {
            pipeline: &spec.name,
            window_ms: None,
            checkpointed: true,
            plugins: None,
        };
        let mut sink = weir::sink::from_spec(&spec.sinks[0], &cx);
        sink.open()?;
        Ok(sink)
    };
    let batch = |id: u64| BatchInfo {
        id,
        time_ms: 1_000 * (id as i64 + 1),
    };
    let records = |value: &str| {
        let mut chunk = Batch::new();
        chunk.push(None, value.as_bytes(), 1_000);
        vec![vec![chunk]]
    };

    let mut first = open().expect("the first run opens");
    first.write(batch(0), &records("a")).expect("batch 0");
    let mut second = open().expect("the second run opens");
    let fenced = first
        .write(batch(1), &records("first's b"))
        .expect_err("the first run is fenced");
    assert!(fenced.superseded, "{fenced:?}");
    second
        .write(batch(0), &records("a again"))
        .expect("batch 0, already committed: skipped");
    second.write(batch(1), &records("b")).expect("batch 1");

    // Three runs open at once; then each tries batch 2.
    let wrote = one_of_three_opened_at_once_writes(open, batch(2), |index| records(&format!("c{index}")));
    let fenced = second
        .write(batch(2), &records("second's c"))
        .expect_err("the second run is fenced");
    assert!(fenced.superseded, "{fenced:?}");
    let values: Vec<String> = broker
        .read_committed("counts")
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(values, ["a", "b", &format!("c{wrote}")]);
}
