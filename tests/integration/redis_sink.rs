//! The Redis sink against a real `redis-server`: exactly-once counts over
//! kill -9 (checked against an independent count read back from Redis),
//! every command, an unreachable server and a marker from another run.

use std::path::Path;
use std::time::Duration;

use redis::Commands;
use weir_tests::redis::RedisServer;
use weir_tests::{files_wordcount, sample_text, scratch, stderr, word_counts, write_inputs, write_pipeline};

/// The word count of `dir/in` into `sinks`, checkpointed when `checkpointed`.
fn pipeline(dir: &Path, checkpointed: bool, sinks: &str) -> String {
    files_wordcount(dir, "redis-wordcount", checkpointed, sinks)
}

fn input(dir: &Path, files: usize, lines: usize) -> String {
    write_inputs(dir, files, lines, 7)
}

fn incrby_sink(redis: &RedisServer) -> String {
    format!(
        "[[sink]]\nname = \"totals\"\ninput = \"counts\"\ntype = \"redis\"\naddress = \"{}\"\ncommand = \"incrby\"\nkey = \"wc:{{key}}\"\n",
        redis.address()
    )
}

/// `wc:<word>` → count, from Redis.
fn counts_in(redis: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    redis
        .strings("wc:*")
        .into_iter()
        .map(|(key, value)| (key["wc:".len()..].to_owned(), value.parse().unwrap()))
        .collect()
}

#[test]
fn killed_pipelines_increment_redis_counts_exactly_once() {
    let redis = RedisServer::start();
    let dir = scratch();
    // Enough batches (one file each) that random kills land inside runs.
    let text = input(dir.path(), 150, 8);
    let file = write_pipeline(
        dir.path(),
        "redis.toml",
        &pipeline(dir.path(), true, &incrby_sink(&redis)),
    );
    let mut rng = super::recovery::Rng(0x0edd_15ee);
    let mut points = Vec::new();
    for _ in 0..3 {
        points.push(format!("redis-prepared:{}", 1 + rng.below(5)));
        points.push(format!("redis-committed:{}", 1 + rng.below(5)));
        points.push(format!("batch-logged:{}", 2 + rng.below(4)));
    }
    points.push("checkpoint-done:1".to_owned());
    let crashes = super::recovery::run_with_crashes(&file, &points, 12, 91);
    assert_eq!(counts_in(&redis), word_counts(&text), "after {crashes:?}");
    assert!(crashes.kills >= 20, "only {} kills: {crashes:?}", crashes.kills);
    let marker: u64 = redis
        .connection()
        .get("weir:redis-wordcount:totals:last-batch")
        .unwrap();
    assert!(marker >= 149, "the marker is at batch {marker}");
}

#[test]
fn every_redis_command_writes_what_its_sink_says() {
    let redis = RedisServer::start();
    let dir = scratch();
    let text = input(dir.path(), 3, 20);
    let expected = word_counts(&text);
    let address = redis.address();
    let sinks = format!(
        r#"
[[sink]]
name = "set"
input = "counts"
type = "redis"
address = "{address}"
key = "last:{{key}}"

[[sink]]
name = "hash"
input = "counts"
type = "redis"
address = "{address}"
command = "hset"
key = "{{pipeline}}:by-word"
field = "{{key}}"

[[sink]]
name = "stream"
input = "counts"
type = "redis"
address = "{address}"
command = "xadd"
key = "counts-stream"

[[sink]]
name = "channel"
input = "counts"
type = "redis"
address = "{address}"
command = "publish"
key = "counts-channel"
"#
    );
    let file = write_pipeline(dir.path(), "redis.toml", &pipeline(dir.path(), false, &sinks));
    // A subscriber, listening before the run starts.
    let mut subscriber = redis.connection();
    subscriber.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let (heard_tx, heard_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut pubsub = subscriber.as_pubsub();
        pubsub.subscribe("counts-channel").unwrap();
        heard_tx.send(0).unwrap();
        let mut heard = 0;
        // Read timeouts only mean nothing came yet (a slow start).
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            match pubsub.get_message() {
                Ok(message) => {
                    let _: String = message.get_payload().unwrap();
                    heard += 1;
                    if heard_tx.send(heard).is_err() {
                        return;
                    }
                }
                Err(error) if error.is_timeout() => {}
                Err(_) => return,
            }
        }
    });
    heard_rx.recv().unwrap();
    super::run_file_ok(&file);

    let mut connection = redis.connection();
    // Three batches, one file each: the records of all of them.
    let records: usize = (0..3).map(|i| word_counts(&sample_text(20, i + 7)).len()).sum();
    let hash: std::collections::BTreeMap<String, String> =
        connection.hgetall("redis-wordcount:by-word").unwrap();
    assert_eq!(
        hash.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    let set = redis.strings("last:*");
    assert_eq!(set.len(), expected.len());
    for (key, value) in &set {
        assert_eq!(
            hash[&key["last:".len()..]],
            *value,
            "SET and HSET hold the last batch's count"
        );
    }
    let length: usize = redis::cmd("XLEN")
        .arg("counts-stream")
        .query(&mut connection)
        .unwrap();
    assert_eq!(length, records, "one stream entry per record");
    let mut heard = 0;
    while heard < records {
        heard = heard_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("every record is published");
    }
}

#[test]
fn an_unreachable_redis_fails_with_its_address_after_the_timeout() {
    let dir = scratch();
    input(dir.path(), 1, 5);
    let address = format!("127.0.0.1:{}", weir_tests::free_port());
    let sinks = format!(
        "[[sink]]\nname = \"out\"\ninput = \"counts\"\ntype = \"redis\"\naddress = \"{address}\"\ntimeout = \"1s\"\n"
    );
    let file = write_pipeline(dir.path(), "redis.toml", &pipeline(dir.path(), false, &sinks));
    let output = super::weir().run(&["run", file.to_str().unwrap(), "--available-now"], super::LIMIT);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "sink `out`: Redis at {address} failed batch 0 (retried for 1s)"
        )),
        "{log}"
    );

    // A bad setting is refused before the run, with the line and the reason.
    let bad = write_pipeline(
        dir.path(),
        "bad.toml",
        &pipeline(
            dir.path(),
            false,
            &sinks.replace("timeout = \"1s\"", "command = \"lpush\""),
        ),
    );
    let output = super::weir().run(&["check", bad.to_str().unwrap()], super::LIMIT);
    assert!(
        stderr(&output).contains("unknown command `lpush` (expected set, incrby, hset, xadd or publish)"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_marker_past_the_batch_log_is_refused_instead_of_skipping_batches() {
    let redis = RedisServer::start();
    let dir = scratch();
    input(dir.path(), 3, 10);
    let file = write_pipeline(
        dir.path(),
        "redis.toml",
        &pipeline(dir.path(), true, &incrby_sink(&redis)),
    );
    super::run_file_ok(&file);
    // The checkpoint is lost; Redis still says batches up to 2 were written.
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let output = super::weir().run(&["run", file.to_str().unwrap(), "--available-now"], super::LIMIT);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("marker `weir:redis-wordcount:totals:last-batch`") && log.contains("delete the key"),
        "{log}"
    );
}
