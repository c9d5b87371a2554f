//! The HTTP sink against a real HTTP receiver: every part carries its
//! idempotency key, so a receiver that keeps the last body per key holds
//! each count exactly once over kill -9; a failing receiver is retried, a
//! refusing one fails the run or is skipped, a slow one times out.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use weir_tests::http::{Behaviour, HttpReceiver};
use weir_tests::{files_wordcount, scratch, stderr, word_counts, write_inputs, write_pipeline};

/// The word count of `dir/in` into an HTTP sink at `url` with `sink_extra`.
fn pipeline(dir: &Path, url: &str, sink_extra: &str) -> String {
    let sink = format!(
        "[[sink]]\nname = \"post\"\ninput = \"counts\"\ntype = \"http\"\nurl = \"{url}\"\n{sink_extra}\n"
    );
    files_wordcount(dir, "http-wordcount", true, &sink)
}

fn input(dir: &Path, files: usize, lines: usize) -> String {
    write_inputs(dir, files, lines, 3)
}

/// Word counts summed over JSON-lines bodies.
pub(super) fn summed(bodies: impl IntoIterator<Item = String>) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for body in bodies {
        for line in body.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let count: u64 = record["value"].as_str().unwrap().parse().unwrap();
            *totals
                .entry(record["key"].as_str().unwrap().to_owned())
                .or_insert(0) += count;
        }
    }
    totals
}

fn run(file: &Path) -> std::process::Output {
    super::weir().run(&["run", file.to_str().unwrap(), "--available-now"], super::LIMIT)
}

#[test]
fn a_receiver_that_honours_idempotency_keys_holds_every_count_once_over_kill_9() {
    let receiver = HttpReceiver::start(Behaviour::Accept);
    let dir = scratch();
    let text = input(dir.path(), 150, 8);
    let file = write_pipeline(
        dir.path(),
        "http.toml",
        &pipeline(
            dir.path(),
            &receiver.url(),
            "records-per-request = 4\nconcurrency = 3",
        ),
    );
    let mut rng = super::recovery::Rng(0x4774_0001);
    let mut points = Vec::new();
    for _ in 0..3 {
        points.push(format!("http-sent:{}", 1 + rng.below(8)));
        points.push(format!("batch-logged:{}", 2 + rng.below(4)));
        points.push(format!("checkpoint-done:{}", 1 + rng.below(2)));
    }
    let crashes = super::recovery::run_with_crashes(&file, &points, 12, 17);
    assert!(crashes.kills >= 20, "only {} kills: {crashes:?}", crashes.kills);
    let received = receiver.received();
    // Every part is JSON lines, keyed and numbered.
    for request in &received {
        assert_eq!(request.content_type, "application/x-ndjson");
        assert_eq!(
            request.key,
            format!("http-wordcount/post/{}/{}", request.batch, request.part)
        );
        assert!(request.part < request.parts, "{request:?}");
        assert!(request.body.lines().count() <= 4, "{request:?}");
    }
    assert_eq!(
        summed(receiver.by_key().into_values()),
        word_counts(&text),
        "after {crashes:?}"
    );
    // Without the keys, the re-sent parts would count twice.
    let resent = received.len() - receiver.by_key().len();
    eprintln!("{resent} parts were sent again after a kill");
}

#[test]
fn a_failing_receiver_is_retried_and_a_refusing_one_fails_the_run_or_is_skipped() {
    // 503 to the first three requests: retried, nothing lost.
    let flaky = HttpReceiver::start(Behaviour::FailFirst(3, 503));
    let dir = scratch();
    let text = input(dir.path(), 3, 10);
    let file = write_pipeline(dir.path(), "http.toml", &pipeline(dir.path(), &flaky.url(), ""));
    let output = run(&file);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(summed(flaky.by_key().into_values()), word_counts(&text));
    assert_eq!(flaky.attempts(), flaky.received().len() + 3);

    // 400: not retried; the run fails with the URL, the status and the answer.
    let refusing = HttpReceiver::start(Behaviour::Refuse(400));
    let dir = scratch();
    input(dir.path(), 2, 10);
    let file = write_pipeline(
        dir.path(),
        "http.toml",
        &pipeline(dir.path(), &refusing.url(), ""),
    );
    let output = run(&file);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "sink `post`: batch 0 part 0 of 1: POST {} answered 400 Bad Request: nope",
            refusing.url()
        )),
        "{log}"
    );
    assert_eq!(refusing.attempts(), 1, "a 400 is not retried");

    // With on-error = "skip", the refused parts are logged and dropped.
    let dir = scratch();
    input(dir.path(), 2, 10);
    let file = write_pipeline(
        dir.path(),
        "http.toml",
        &pipeline(dir.path(), &refusing.url(), "on-error = \"skip\""),
    );
    let output = run(&file);
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("dropped (on-error = \"skip\")"), "{log}");
}

#[test]
fn a_slow_or_absent_receiver_fails_after_retry_for_with_the_reason() {
    let slow = HttpReceiver::start(Behaviour::Slow(Duration::from_secs(3)));
    let dir = scratch();
    input(dir.path(), 1, 5);
    let file = write_pipeline(
        dir.path(),
        "http.toml",
        &pipeline(dir.path(), &slow.url(), "timeout = \"300ms\"\nretry-for = \"1s\""),
    );
    let output = run(&file);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("timed out after 300ms (retried for 1s)"), "{log}");

    let url = format!("http://127.0.0.1:{}/ingest", weir_tests::free_port());
    let dir = scratch();
    input(dir.path(), 1, 5);
    let file = write_pipeline(
        dir.path(),
        "http.toml",
        &pipeline(dir.path(), &url, "retry-for = \"500ms\""),
    );
    let output = run(&file);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!("POST {url} failed")) && log.contains("(retried for 500ms)"),
        "{log}"
    );

    // A bad setting is refused before the run.
    let bad = write_pipeline(
        dir.path(),
        "bad.toml",
        &pipeline(dir.path(), "ftp://example.com/x", ""),
    );
    let output = super::weir().run(&["check", bad.to_str().unwrap()], super::LIMIT);
    assert!(
        stderr(&output).contains("is not http:// or https://"),
        "{}",
        stderr(&output)
    );
}
