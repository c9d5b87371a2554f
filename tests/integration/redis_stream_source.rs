//! The Redis Streams source against a real `redis-server`: word counts
//! read from two streams exactly once under repeated kill -9 (compared with
//! an independent count of what was added), entries acknowledged once their
//! batch committed, the record's shape, and the failures a user meets.

use std::path::Path;

use weir_tests::redis::RedisServer;
use weir_tests::{
    sample_text, scratch, sink_lines, stderr, summed_counts, word_counts, wordcount, write_pipeline,
};

use super::recovery::run_with_crashes;
use super::{LIMIT, run_file_ok, weir};

/// A [`wordcount`] of the streams `in-a` and `in-b` into the files sink
/// `dir/out`; `source_extra` goes into the source's table.
fn stream_wordcount(redis: &RedisServer, dir: &Path, checkpointed: bool, source_extra: &str) -> String {
    let source = format!(
        "type = \"redis-stream\"\naddress = \"{}\"\nstreams = [\"in-a\", \"in-b\"]\nstart = \"earliest\"\n{source_extra}",
        redis.address()
    );
    let sink = format!(
        "[[sink]]\nname = \"out\"\ninput = \"counts\"\ntype = \"files\"\npath = {:?}\n",
        dir.join("out").display().to_string()
    );
    // Small reads and a short queue, so that little is read ahead of the
    // pace and a paced run takes many batches.
    let pipeline = "chunk-records = 250\nqueue-chunks = 4";
    wordcount(dir, "stream-wordcount", checkpointed, pipeline, &source, &sink)
}

/// The default group of the pipeline above.
const GROUP: &str = "weir.stream-wordcount.lines";

#[test]
fn killed_pipelines_read_redis_streams_exactly_once() {
    let redis = RedisServer::start();
    let dir = scratch();
    let (a, b) = (sample_text(14_000, 31), sample_text(10_000, 32));
    redis.xadd_lines("in-a", &a);
    redis.xadd_lines("in-b", &b);
    // Slow enough that a run takes many batches (kills land inside).
    let file = write_pipeline(
        dir.path(),
        "streams.toml",
        &stream_wordcount(&redis, dir.path(), true, "max-rate = 2000"),
    );
    let mut rng = super::recovery::Rng(0x5723_a115);
    let mut points = Vec::new();
    for _ in 0..3 {
        points.push(format!("redis-stream-read:{}", 2 + rng.below(6)));
        points.push(format!("sink-commit:{}", 1 + rng.below(4)));
        points.push(format!("batch-logged:{}", 2 + rng.below(4)));
    }
    points.push("checkpoint-done:1".to_owned());
    let crashes = run_with_crashes(&file, &points, 12, 57);
    assert!(crashes.kills >= 20, "only {} kills: {crashes:?}", crashes.kills);
    let expected = word_counts(&(a + &b));
    assert_eq!(
        summed_counts(&dir.path().join("out")),
        expected,
        "after {crashes:?}"
    );
    // The last run acknowledged everything it read.
    assert_eq!(redis.pending("in-a", GROUP), 0);
    assert_eq!(redis.pending("in-b", GROUP), 0);

    // Entries added later are read by the next run, and only they.
    let more = sample_text(300, 33);
    redis.xadd_lines("in-b", &more);
    let before = sink_lines(&dir.path().join("out")).len();
    run_file_ok(&file);
    assert!(sink_lines(&dir.path().join("out")).len() > before);
    let mut all = word_counts(&(sample_text(14_000, 31) + &sample_text(10_000, 32)));
    for (word, n) in word_counts(&more) {
        *all.entry(word).or_default() += n;
    }
    assert_eq!(summed_counts(&dir.path().join("out")), all);
}

#[test]
fn entries_trimmed_before_their_logged_batch_is_replayed_fail_the_source() {
    let redis = RedisServer::start();
    let dir = scratch();
    redis.xadd_lines("in-a", &sample_text(500, 51));
    let file = write_pipeline(
        dir.path(),
        "streams.toml",
        &stream_wordcount(&redis, dir.path(), true, "max-rate = 200"),
    );
    // Killed once two batches are logged, before their checkpoint.
    let status = weir()
        .command(&["run", "--available-now", file.to_str().unwrap()])
        .env("WEIR_CRASH_AT", "batch-logged:2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    redis::cmd("XTRIM")
        .arg("in-a")
        .arg("MAXLEN")
        .arg(0)
        .query::<()>(&mut redis.connection())
        .unwrap();
    // Reading the logged batches again would lose records: the run fails
    // with the reason instead.
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("stream `in-a` no longer holds the entries of a logged batch"),
        "{log}"
    );
}

#[test]
fn without_a_checkpoint_entries_are_acknowledged_once_their_batch_committed() {
    let redis = RedisServer::start();
    let dir = scratch();
    let text = sample_text(400, 41);
    redis.xadd_lines("in-a", &text);
    let file = write_pipeline(
        dir.path(),
        "streams.toml",
        &stream_wordcount(&redis, dir.path(), false, ""),
    );
    run_file_ok(&file);
    assert_eq!(summed_counts(&dir.path().join("out")), word_counts(&text));
    assert_eq!(redis.pending("in-a", GROUP), 0, "every entry is acknowledged");
    // The group goes on where it stood: a second run reads only new entries.
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    let more = sample_text(50, 42);
    redis.xadd_lines("in-a", &more);
    run_file_ok(&file);
    assert_eq!(summed_counts(&dir.path().join("out")), word_counts(&more));
}

#[test]
fn stream_entries_become_records_with_key_value_and_time() {
    let redis = RedisServer::start();
    let dir = scratch();
    let mut connection = redis.connection();
    let ids: Vec<String> = [
        vec![("key", "k1"), ("value", "v1")],
        vec![("value", "no key")],
        vec![("a", "1"), ("b", "2")],
    ]
    .into_iter()
    .map(|fields| {
        let mut command = redis::cmd("XADD");
        command.arg("events").arg("*");
        for (name, value) in fields {
            command.arg(name).arg(value);
        }
        command.query(&mut connection).unwrap()
    })
    .collect();
    let pipeline = format!(
        r#"
[pipeline]
name = "shapes"
batch-interval = "100ms"

[[source]]
name = "events"
type = "redis-stream"
address = "{}"
streams = "events"
start = "earliest"
group = "shape-readers"

[[sink]]
name = "out"
input = "events"
type = "files"
path = {:?}
format = "jsonl"
"#,
        redis.address(),
        dir.path().join("out").display().to_string()
    );
    let file = write_pipeline(dir.path(), "shapes.toml", &pipeline);
    run_file_ok(&file);
    let records: Vec<serde_json::Value> = sink_lines(&dir.path().join("out"))
        .into_iter()
        .map(|(_, line)| serde_json::from_str(&line).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{records:?}");
    let by_value = |value: &str| {
        records
            .iter()
            .find(|record| record["value"] == value)
            .unwrap_or_else(|| panic!("no record of value {value:?} in {records:?}"))
    };
    let first = by_value("v1");
    assert_eq!(first["key"], "k1");
    let added_ms: i64 = ids[0].split('-').next().unwrap().parse().unwrap();
    assert_eq!(first["timestamp"], added_ms, "the entry id's time");
    assert!(by_value("no key")["key"].is_null());
    let json: serde_json::Value = serde_json::from_str(
        records
            .iter()
            .find_map(|record| record["value"].as_str().filter(|v| v.starts_with('{')))
            .expect("the entry without `value` as JSON"),
    )
    .unwrap();
    assert_eq!(json, serde_json::json!({"a": "1", "b": "2"}));
}

#[test]
fn bad_streams_and_servers_fail_with_the_reason() {
    let redis = RedisServer::start();
    let dir = scratch();
    // Nobody listens: the source gives up after `give-up-after`, naming
    // the address.
    let address = format!("127.0.0.1:{}", weir_tests::free_port());
    let nowhere = stream_wordcount(&redis, dir.path(), false, "give-up-after = \"1s\"")
        .replace(&redis.address(), &address);
    let file = write_pipeline(dir.path(), "nowhere.toml", &nowhere);
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "source `lines`: Redis at {address} has not answered for"
        )),
        "{log}"
    );

    // A key that is not a stream fails at once, with Redis's reason.
    redis::cmd("SET")
        .arg("in-a")
        .arg("a string")
        .query::<()>(&mut redis.connection())
        .unwrap();
    let file = write_pipeline(
        dir.path(),
        "wrongtype.toml",
        &stream_wordcount(&redis, dir.path(), false, ""),
    );
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("source `lines`: Redis at") && log.contains("WRONGTYPE"),
        "{log}"
    );

    // Bad settings are refused before the run, with the reason.
    for (extra, error) in [
        (
            "start = \"middle\"",
            "`start` must be \"earliest\" or \"latest\", not \"middle\"",
        ),
        ("consumer = \"\"", "`consumer` is empty"),
    ] {
        let text = stream_wordcount(&redis, dir.path(), false, "").replace("start = \"earliest\"", extra);
        let bad = write_pipeline(dir.path(), "bad.toml", &text);
        let output = weir().run(&["check", bad.to_str().unwrap()], LIMIT);
        assert!(stderr(&output).contains(error), "{extra}: {}", stderr(&output));
    }
    let text = stream_wordcount(&redis, dir.path(), false, "").replace("streams = [\"in-a\", \"in-b\"]", "");
    let bad = write_pipeline(dir.path(), "bad.toml", &text);
    let output = weir().run(&["check", bad.to_str().unwrap()], LIMIT);
    assert!(
        stderr(&output).contains("a `redis-stream` source needs `streams`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_group_started_at_the_latest_entry_recovers_from_a_kill_before_its_first_checkpoint() {
    let redis = RedisServer::start();
    let dir = scratch();
    // Entries from before the pipeline: `start = "latest"` leaves them.
    redis.xadd_lines("in-a", &sample_text(100, 71));
    let text = stream_wordcount(&redis, dir.path(), true, "").replace("start = \"earliest\"\n", "");
    let file = write_pipeline(dir.path(), "latest.toml", &text);
    let log = dir.path().join("weir.log");
    let mut child = weir()
        .command(&["run", file.to_str().unwrap()])
        .env("WEIR_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + LIMIT;
    while !read_log().contains("created the consumer group") {
        assert!(std::time::Instant::now() < deadline, "{}", read_log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let new = sample_text(200, 72);
    redis.xadd_lines("in-a", &new);
    // Killed as soon as some of it is out: before a checkpoint holds it.
    while sink_lines(&dir.path().join("out")).is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", read_log());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The logged batches are read again from where the group started.
    run_file_ok(&file);
    assert_eq!(summed_counts(&dir.path().join("out")), word_counts(&new));
}
