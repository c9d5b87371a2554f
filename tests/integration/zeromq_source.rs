//! The ZeroMQ source against pyzmq producers (libzmq): a word count over
//! kill -9 that counts every logged message exactly once, `SUB`
//! subscriptions and multipart messages, and the failures a user meets.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use weir_tests::zeromq::Producer;
use weir_tests::{
    free_port, sample_text, scratch, sink_lines, stderr, summed_counts, word_counts, wordcount,
    write_pipeline,
};

use super::{LIMIT, weir};

/// Starts a streaming run of `file`, its log in `log`, killed at `crash_at`.
fn start(file: &Path, crash_at: Option<&str>, log: &Path) -> Child {
    let mut command = weir().command(&["run", file.to_str().unwrap()]);
    if let Some(point) = crash_at {
        command.env("WEIR_CRASH_AT", point);
    }
    command
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The lines of the source's write-ahead log (segments `<start offset>.wal`
/// of plain lines): every message it received and logged, in order.
fn logged_lines(dir: &Path) -> Vec<String> {
    let wal = dir.join("checkpoints").join("wal").join("lines");
    let mut segments: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(&wal)
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let path = entry.ok()?.path();
                    let start = path.file_name()?.to_str()?.strip_suffix(".wal")?.parse().ok()?;
                    Some((start, path))
                })
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    segments
        .into_iter()
        .flat_map(|(_, path)| {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits until `done` holds, failing with the log after `limit`.
fn wait_until(limit: Duration, log: &Path, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn killed_pipelines_count_every_logged_zeromq_message_exactly_once() {
    let dir = scratch();
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let source = format!("type = \"zeromq\"\naddress = \"{endpoint}\"\nmode = \"bind\"\n");
    let sink = format!(
        "[[sink]]\nname = \"out\"\ninput = \"counts\"\ntype = \"files\"\npath = {:?}\n",
        dir.path().join("out").display().to_string()
    );
    let file = write_pipeline(
        dir.path(),
        "zmq.toml",
        &wordcount(dir.path(), "zmq-wordcount", true, "", &source, &sink),
    );
    // Every line starts with its own token, so a line counted twice shows.
    let text = sample_text(4000, 61);
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| format!("m{i} {line}"))
        .collect();
    // Every fifth message holds two lines.
    let mut messages = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if i % 5 == 0 && i + 1 < lines.len() {
            messages.push(serde_json::Value::from(format!("{}\n{}", lines[i], lines[i + 1])));
            i += 2;
        } else {
            messages.push(serde_json::Value::from(lines[i].clone()));
            i += 1;
        }
    }
    // About 5 s of messages; the producer queues them while no pipeline is up.
    let producer = Producer::start(
        "push",
        &endpoint,
        "connect",
        &serde_json::Value::from(messages),
        25,
        0.03,
    );
    let log = dir.path().join("weir.log");
    let mut rng = super::recovery::Rng(0x2e60_0001);
    let mut kills = 0;
    for point in [
        "batch-logged:3",
        "sink-commit:2",
        "checkpoint-done:1",
        "batch-logged:6",
        "sink-commit:4",
    ]
    .into_iter()
    .map(Some)
    .chain(std::iter::repeat_n(None, 15))
    {
        let mut child = start(&file, point, &log);
        let deadline = Instant::now()
            + match point {
                Some(_) => Duration::from_secs(30),
                None => Duration::from_millis(200 + rng.below(500)),
            };
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        assert!(!status.success(), "{}", std::fs::read_to_string(&log).unwrap());
        kills += 1;
    }
    // The last run takes what is left (the producer's queue drains into
    // it); it is stopped once its output holds every logged line.
    let mut child = start(&file, None, &log);
    producer.finish();
    let out = dir.path().join("out");
    // Done once the output counts what is logged, and nothing more came
    // for a second (what a killed run held unlogged is gone: ZeroMQ cannot
    // send it again).
    let mut last = (Vec::new(), Instant::now());
    wait_until(LIMIT, &log, || {
        let logged = logged_lines(dir.path());
        if logged != last.0 {
            last = (logged, Instant::now());
            return false;
        }
        last.1.elapsed() > Duration::from_secs(1) && summed_counts(&out) == word_counts(&last.0.join("\n"))
    });
    weir_tests::terminate(&child);
    assert!(weir_tests::wait_status(&mut child, LIMIT).success());

    let logged = logged_lines(dir.path());
    let sent: BTreeSet<&String> = lines.iter().collect();
    let unique: BTreeSet<&String> = logged.iter().collect();
    assert_eq!(unique.len(), logged.len(), "a message was logged twice");
    assert!(
        logged.iter().all(|line| sent.contains(line)),
        "a logged line was never sent"
    );
    // ZeroMQ cannot resend what a killed process held, but most got through.
    assert!(
        logged.len() * 2 > lines.len(),
        "only {} of {} lines arrived over {kills} kills",
        logged.len(),
        lines.len()
    );
    assert_eq!(
        summed_counts(&out),
        word_counts(&logged.join("\n")),
        "after {kills} kills"
    );
}

#[test]
fn a_sub_socket_reads_its_subscriptions_and_joins_multipart_frames() {
    let dir = scratch();
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let pipeline = format!(
        r#"
[pipeline]
name = "zmq-sub"
batch-interval = "100ms"

[[source]]
name = "events"
type = "zeromq"
address = "{endpoint}"
socket = "sub"
subscribe = ["keep", "also"]

[[sink]]
name = "out"
input = "events"
type = "files"
path = {:?}
"#,
        dir.path().join("out").display().to_string()
    );
    let file = write_pipeline(dir.path(), "sub.toml", &pipeline);
    let messages = serde_json::json!([
        "keep alpha beta",
        "drop gamma",
        ["keep ", "delta"],
        "keep x\r\nkeep y\n",
        "also z",
    ]);
    let producer = Producer::start("pub", &endpoint, "bind", &messages, 10, 0.0);
    let log = dir.path().join("weir.log");
    let mut child = start(&file, None, &log);
    producer.finish();
    let expected: BTreeSet<String> = ["keep alpha beta", "keep delta", "keep x", "keep y", "also z"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let out = dir.path().join("out");
    wait_until(LIMIT, &log, || sink_lines(&out).len() >= expected.len());
    weir_tests::terminate(&child);
    assert!(weir_tests::wait_status(&mut child, LIMIT).success());
    let got: Vec<String> = sink_lines(&out).into_iter().map(|(_, line)| line).collect();
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), expected, "{got:?}");
    assert_eq!(got.len(), expected.len(), "{got:?}");
}

#[test]
fn a_pull_socket_connects_again_when_its_producer_restarts() {
    let dir = scratch();
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let pipeline = format!(
        "[pipeline]\nname = \"zmq-pull\"\nbatch-interval = \"100ms\"\n\n[[source]]\nname = \"lines\"\ntype = \"zeromq\"\n\
         address = \"{endpoint}\"\n\n[[sink]]\nname = \"out\"\ninput = \"lines\"\ntype = \"files\"\npath = {:?}\n",
        dir.path().join("out").display().to_string()
    );
    let file = write_pipeline(dir.path(), "pull.toml", &pipeline);
    let log = dir.path().join("weir.log");
    let out = dir.path().join("out");
    let batch = |from: usize| {
        serde_json::Value::from(
            (from..from + 100)
                .map(|i| format!("line {i}"))
                .collect::<Vec<_>>(),
        )
    };
    // The pipeline connects to a producer that binds, sends, and goes away.
    let first = Producer::start("push", &endpoint, "bind", &batch(0), 100, 0.0);
    let mut child = start(&file, None, &log);
    first.finish();
    wait_until(LIMIT, &log, || sink_lines(&out).len() >= 100);
    // A new producer on the same address: the pipeline finds it.
    let second = Producer::start("push", &endpoint, "bind", &batch(100), 100, 0.0);
    second.finish();
    wait_until(LIMIT, &log, || sink_lines(&out).len() >= 200);
    weir_tests::terminate(&child);
    assert!(weir_tests::wait_status(&mut child, LIMIT).success());
    let got: BTreeSet<String> = sink_lines(&out).into_iter().map(|(_, line)| line).collect();
    let sent: BTreeSet<String> = (0..200).map(|i| format!("line {i}")).collect();
    assert_eq!(got, sent);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("the ZeroMQ producer went away: connecting again"),
        "the receiver noticed the producer leaving"
    );
}

#[test]
fn bad_zeromq_settings_and_a_taken_address_fail_with_the_reason() {
    let dir = scratch();
    let pipeline = |source_extra: &str| {
        format!(
            "[pipeline]\nname = \"zmq-bad\"\nbatch-interval = \"100ms\"\n\n[[source]]\nname = \"lines\"\ntype = \"zeromq\"\n{source_extra}\n\n[[sink]]\nname = \"out\"\ninput = \"lines\"\ntype = \"console\"\n"
        )
    };
    for (extra, error) in [
        (
            "address = \"127.0.0.1:5555\"",
            "invalid address \"127.0.0.1:5555\" (write `tcp://host:port`)",
        ),
        (
            "address = \"tcp://127.0.0.1:5555\"\nsubscribe = \"a\"",
            "`subscribe` is for `socket = \"sub\"`",
        ),
        (
            "address = \"tcp://127.0.0.1:5555\"\nsocket = \"router\"",
            "`socket` must be \"pull\" or \"sub\", not \"router\"",
        ),
    ] {
        let file = write_pipeline(dir.path(), "bad.toml", &pipeline(extra));
        let output = weir().run(&["check", file.to_str().unwrap()], LIMIT);
        assert!(!output.status.success());
        assert!(stderr(&output).contains(error), "{extra}: {}", stderr(&output));
    }
    // ZeroMQ has no end of stream: --available-now is refused up front.
    let file = write_pipeline(
        dir.path(),
        "endless.toml",
        &pipeline("address = \"tcp://127.0.0.1:5555\""),
    );
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    assert!(!output.status.success());
    assert!(
        stderr(&output)
            .contains("source `lines` is a ZeroMQ source (ZeroMQ has no end of stream): it never runs out"),
        "{}",
        stderr(&output)
    );
    // Binding an address another process holds fails the run, naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp://{}", taken.local_addr().unwrap());
    let file = write_pipeline(
        dir.path(),
        "taken.toml",
        &pipeline(&format!("address = \"{endpoint}\"\nmode = \"bind\"")),
    );
    let output = weir().run(&["run", file.to_str().unwrap()], LIMIT);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!("source `lines`: cannot bind {endpoint}")),
        "{}",
        stderr(&output)
    );
}
