//! Sinks written as plugins (`type = "plugin"`), with real components
//! built from `plugins/`: `post-counts` POSTs each partition to the tests'
//! HTTP receiver with an idempotency key, so the receiver holds every count
//! exactly once over kill -9; `probe-sink` writes through each capability a
//! sink may be granted and shows what it may not reach.

use std::io::Read;
use std::path::Path;

use weir_tests::http::{Behaviour, HttpReceiver};
use weir_tests::{
    plugins, scratch, stderr, word_counts, wordcount_with_plugins, write_inputs, write_pipeline,
};

/// The word count of `dir/in` (one file a batch, checkpointed) into a
/// plugin sink named `post` running `plugin` with `sink_extra`.
fn pipeline(dir: &Path, plugin: &str, sink_extra: &str) -> String {
    let source = format!(
        "type = \"files\"\npath = {:?}\nmax-files-per-batch = 1",
        dir.join("in").display().to_string()
    );
    let sink = format!(
        "[[sink]]\nname = \"post\"\ninput = \"counts\"\ntype = \"plugin\"\nplugin = \"sink\"\n{sink_extra}\n"
    );
    wordcount_with_plugins(dir, "plugin-sink", true, "", &[("sink", plugin)], &source, &sink)
}

/// Sink keys that POST to `receiver`, allowed to reach it.
fn posting_to(receiver: &HttpReceiver, extra: &str) -> String {
    format!(
        "config = {{ url = {:?} }}\nallow-http = {:?}\n{extra}",
        receiver.url(),
        receiver.address()
    )
}

/// Writes the [`pipeline`] of `plugin` with `sink_extra` into `dir` and
/// runs it.
fn run_sink(dir: &Path, plugin: &str, sink_extra: &str) -> std::process::Output {
    run(&write_pipeline(
        dir,
        "sink.toml",
        &pipeline(dir, plugin, sink_extra),
    ))
}

fn run(file: &Path) -> std::process::Output {
    super::weir().run(&["run", file.to_str().unwrap(), "--available-now"], super::LIMIT)
}

#[test]
fn a_sink_plugin_posts_every_count_once_over_kill_9() {
    let receiver = HttpReceiver::start(Behaviour::Accept);
    let dir = scratch();
    let text = write_inputs(dir.path(), 120, 8, 11);
    let file = write_pipeline(
        dir.path(),
        "sink.toml",
        &pipeline(dir.path(), plugins::POST_COUNTS, &posting_to(&receiver, "")),
    );
    let mut rng = super::recovery::Rng(0x5197_0001);
    let mut points = Vec::new();
    for _ in 0..3 {
        points.push(format!("plugin-sink-wrote:{}", 1 + rng.below(6)));
        points.push(format!("batch-logged:{}", 2 + rng.below(4)));
        points.push(format!("checkpoint-done:{}", 1 + rng.below(2)));
    }
    let crashes = super::recovery::run_with_crashes(&file, &points, 12, 19);
    assert!(crashes.kills >= 20, "only {} kills: {crashes:?}", crashes.kills);
    let received = receiver.received();
    for request in &received {
        assert_eq!(request.content_type, "application/x-ndjson");
        assert_eq!(
            request.key,
            format!("plugin-sink/post/{}/{}", request.batch, request.part)
        );
        assert!(request.part < request.parts, "{request:?}");
    }
    assert_eq!(
        super::http_sink::summed(receiver.by_key().into_values()),
        word_counts(&text),
        "after {crashes:?}"
    );
    let resent = received.len() - receiver.by_key().len();
    // The kills right after a write made some writes twice: the keys are
    // what kept the counts exact.
    assert!(resent > 0, "no write was made twice: {crashes:?}");
    eprintln!("{resent} writes were made again after a kill");
}

#[test]
fn a_failing_receiver_is_retried_and_a_refusing_one_fails_the_run_or_is_skipped() {
    // 503 to the first three requests: transient, retried, nothing lost.
    let flaky = HttpReceiver::start(Behaviour::FailFirst(3, 503));
    let dir = scratch();
    let text = write_inputs(dir.path(), 3, 10, 5);
    let output = run_sink(
        dir.path(),
        plugins::POST_COUNTS,
        &posting_to(&flaky, "retries = 5"),
    );
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert_eq!(
        super::http_sink::summed(flaky.by_key().into_values()),
        word_counts(&text)
    );
    assert_eq!(flaky.attempts(), flaky.received().len() + 3);
    assert!(log.contains("answered 503"), "{log}");

    // 400: permanent, not retried; the run fails naming the sink, the
    // plugin, the batch and the answer.
    let refusing = HttpReceiver::start(Behaviour::Refuse(400));
    let dir = scratch();
    write_inputs(dir.path(), 2, 10, 5);
    let output = run_sink(dir.path(), plugins::POST_COUNTS, &posting_to(&refusing, ""));
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("sink `post`: plugin `sink` could not write partition")
            && log.contains(&format!(
                "of batch 0: the plugin says (a permanent failure, not retried): POST {} answered 400: nope",
                refusing.url()
            )),
        "{log}"
    );
    assert!(
        refusing.attempts() <= 2,
        "a 400 is not retried (one write per partition)"
    );

    // Nobody listening: transient, retried, then the run fails naming the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let dir = scratch();
    write_inputs(dir.path(), 1, 5, 5);
    let url = format!("http://{address}/ingest");
    let sink = format!("config = {{ url = {url:?} }}\nallow-http = {address:?}\nretries = 1");
    let output = run_sink(dir.path(), plugins::POST_COUNTS, &sink);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!("the plugin says: request failed: POST {url}: "))
            && log.contains("ConnectionRefused")
            && log.contains("(tried 2 times)"),
        "{log}"
    );

    // With on-error = "skip-batch", the refused writes are logged and dropped.
    let dir = scratch();
    write_inputs(dir.path(), 2, 10, 5);
    let output = run_sink(
        dir.path(),
        plugins::POST_COUNTS,
        &posting_to(&refusing, "on-error = \"skip-batch\""),
    );
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("skipped (on-error = \"skip-batch\")"), "{log}");

    // Until `quarantine-after` batches in a row had a skipped write.
    let dir = scratch();
    write_inputs(dir.path(), 3, 10, 5);
    let output = run_sink(
        dir.path(),
        plugins::POST_COUNTS,
        &posting_to(&refusing, "on-error = \"skip-batch\"\nquarantine-after = 2"),
    );
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("quarantined: plugin `sink` failed to write 2 batches in a row (quarantine-after = 2)"),
        "{log}"
    );
}

#[test]
fn a_host_outside_allow_http_is_denied_and_not_retried() {
    let receiver = HttpReceiver::start(Behaviour::Accept);
    let other = HttpReceiver::start(Behaviour::Accept);
    let dir = scratch();
    write_inputs(dir.path(), 1, 5, 5);
    // Allowed to reach `other` only: the request to `receiver` never leaves.
    let sink = format!(
        "config = {{ url = {:?} }}\nallow-http = {:?}\n",
        receiver.url(),
        other.address()
    );
    let output = run_sink(dir.path(), plugins::POST_COUNTS, &sink);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "the plugin says (a permanent failure, not retried): the request to {} was denied: its host is not in the sink's allow-http",
            receiver.url()
        )),
        "{log}"
    );
    assert_eq!(receiver.attempts(), 0);
    assert_eq!(other.attempts(), 0);

    // Without any allow-http, nothing at all.
    let dir = scratch();
    write_inputs(dir.path(), 1, 5, 5);
    let sink = format!("config = {{ url = {:?} }}\n", receiver.url());
    let output = run_sink(dir.path(), plugins::POST_COUNTS, &sink);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("was denied"), "{}", stderr(&output));
    assert_eq!(receiver.attempts(), 0);
}

/// The `key value` lines of every file in `dir`, sorted.
fn lines_in(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|entry| {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            text.lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

/// Word counts summed over `key value` lines.
fn counted(lines: impl IntoIterator<Item = String>) -> std::collections::BTreeMap<String, u64> {
    let mut totals = std::collections::BTreeMap::new();
    for line in lines {
        let (word, count) = line.rsplit_once(' ').unwrap();
        *totals.entry(word.to_owned()).or_insert(0) += count.parse::<u64>().unwrap();
    }
    totals
}

#[test]
fn a_sink_plugin_writes_only_under_its_write_dir_and_connects_only_where_allowed() {
    // A writable directory, at /out: one file per batch and partition.
    let dir = scratch();
    let text = write_inputs(dir.path(), 3, 10, 7);
    let out = dir.path().join("out");
    let sink = format!(
        "config = {{ action = \"write-file\" }}\nwrite-dir = {:?}\n",
        out.display().to_string()
    );
    let output = run_sink(dir.path(), plugins::PROBE_SINK, &sink);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(counted(lines_in(&out)), word_counts(&text));
    assert!(out.join("0-0.txt").exists() || out.join("0-1.txt").exists());

    // Nothing outside it: a host file read through an absolute path fails.
    let dir = scratch();
    write_inputs(dir.path(), 1, 5, 7);
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "not for plugins").unwrap();
    let sink = format!(
        "config = {{ action = \"read-outside\", path = {:?} }}\nwrite-dir = {:?}\n",
        secret.display().to_string(),
        out.display().to_string()
    );
    let output = run_sink(dir.path(), plugins::PROBE_SINK, &sink);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!("reading {}: Err(", secret.display())),
        "{log}"
    );
    assert!(!log.contains("not for plugins"), "{log}");

    // TCP to an allowed address: the records arrive there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = std::thread::spawn(move || {
        let mut received = String::new();
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming() {
            let mut text = String::new();
            stream.unwrap().read_to_string(&mut text).unwrap();
            if text == "STOP" {
                break;
            }
            received.push_str(&text);
        }
        received
    });
    let dir = scratch();
    let text = write_inputs(dir.path(), 2, 10, 9);
    let sink =
        format!("config = {{ action = \"connect\", address = {address:?} }}\nallow-connect = {address:?}\n");
    let output = run_sink(dir.path(), plugins::PROBE_SINK, &sink);
    assert!(output.status.success(), "{}", stderr(&output));
    std::io::Write::write_all(&mut std::net::TcpStream::connect(&address).unwrap(), b"STOP").unwrap();
    let received = accepted.join().unwrap();
    assert_eq!(counted(received.lines().map(str::to_owned)), word_counts(&text));

    // A listening address that is not allowed (another one is): the host
    // refuses the connection before it is made (transient, so retried,
    // then the run fails), and the listener never sees it.
    let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listening.set_nonblocking(true).unwrap();
    let target = listening.local_addr().unwrap().to_string();
    let dir = scratch();
    write_inputs(dir.path(), 1, 5, 9);
    let sink = format!(
        "config = {{ action = \"connect\", address = {target:?} }}\nallow-connect = {address:?}\nretries = 1\n"
    );
    let output = run_sink(dir.path(), plugins::PROBE_SINK, &sink);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("could not write") && log.contains("(tried 2 times)"),
        "{log}"
    );
    assert_eq!(
        listening.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "a connection reached an address outside allow-connect"
    );
}

#[test]
fn a_trapping_sink_plugin_is_retried_on_a_fresh_instance() {
    let dir = scratch();
    write_inputs(dir.path(), 2, 5, 3);
    let sink = "config = { action = \"trap-first\" }\n";
    let output = run_sink(dir.path(), plugins::PROBE_SINK, sink);
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("trapping on the first try of batch 0"), "{log}");

    // With no retries, the trap fails the run with the plugin's panic message.
    let dir = scratch();
    write_inputs(dir.path(), 1, 5, 3);
    let sink = "config = { action = \"trap-first\" }\nretries = 0\n";
    let output = run_sink(dir.path(), plugins::PROBE_SINK, sink);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("plugin `sink` could not write")
            && log.contains("trapping on the first try")
            && log.contains("(tried once)"),
        "{log}"
    );
}

#[test]
fn bad_plugin_sinks_are_refused_with_the_reason() {
    let dir = scratch();
    write_inputs(dir.path(), 1, 5, 3);
    let check = |plugin: &str, sink_extra: &str, expected: &str| {
        let output = run_sink(dir.path(), plugin, sink_extra);
        let log = stderr(&output);
        assert!(!output.status.success(), "{sink_extra}: {log}");
        assert!(
            log.contains(expected),
            "{sink_extra}: expected {expected:?} in {log}"
        );
    };
    // A transform is not a sink.
    check(plugins::LOWERCASE, "", "plugin `sink` (");
    check(
        plugins::LOWERCASE,
        "",
        "is a map, not a sink plugin (build it with #[weir_guest::sink])",
    );
    // The plugin's init refuses its config.
    check(plugins::POST_COUNTS, "", "plugin `sink` cannot start: ");
    check(
        plugins::POST_COUNTS,
        "config = { url = \"ftp://x\" }",
        "`url` must be an http:// or https:// URL",
    );
    // Keys checked before anything runs.
    check(
        plugins::POST_COUNTS,
        "allow-http = \"localhost\"",
        "`allow-http`: `localhost` is not a `host:port`",
    );
    check(
        plugins::POST_COUNTS,
        "on-error = \"dead-letter\"",
        "unknown on-error `dead-letter` for a plugin sink",
    );
    check(
        plugins::POST_COUNTS,
        "per = \"record\"",
        "unknown per `record` (expected partition or batch)",
    );
    check(
        plugins::POST_COUNTS,
        "limits = { fuel = 10 }",
        "a sink plugin has no fuel budget",
    );
    check(
        plugins::POST_COUNTS,
        "retries = 101",
        "`retries` = 101 is more than 100",
    );
    check(
        plugins::POST_COUNTS,
        "allow-connect = \"::1:5432\"",
        "`allow-connect`: `::1:5432`: put an IPv6 address in brackets (`[::1]:5432`)",
    );
    // Untrusted code may not write where the engine does.
    check(
        plugins::PROBE_SINK,
        &format!(
            "config = {{ action = \"write-file\" }}\nwrite-dir = {:?}",
            dir.path().display().to_string()
        ),
        "overlaps the checkpoint directory",
    );
    let text =
        pipeline(dir.path(), plugins::POST_COUNTS, "").replace("plugin = \"sink\"", "plugin = \"nope\"");
    let output = run(&write_pipeline(dir.path(), "sink.toml", &text));
    assert!(
        stderr(&output).contains("unknown plugin `nope` (declare it in [plugins]"),
        "{}",
        stderr(&output)
    );

    // A sink plugin is not a transform either.
    let text = pipeline(
        dir.path(),
        plugins::POST_COUNTS,
        "config = { url = \"http://127.0.0.1:1/\" }",
    )
    .replace("plugin = \"split-words\"", "plugin = \"sink\"");
    let output = run(&write_pipeline(dir.path(), "sink.toml", &text));
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(
            "stage `words`: plugin `sink` is a sink plugin: use it in a [[sink]] table (type = \"plugin\", plugin = \"<its name>\"), not with op `flat-map`"
        ),
        "{log}"
    );
}
