//! Every resource a plugin or a source can use is bounded by configuration:
//! paired tests (obeyed / violated) for the log budget, captured stdout and
//! stderr, the data one call moves between host and guest, the memory of a
//! state call, spilled state's resident memory, and an available-now socket
//! that never connects.

use std::path::Path;

use weir_tests::{plugins, scratch, sink_lines, stderr, write_pipeline};

use super::sandbox::{assert_ok, assert_stopped_by, run};
use super::{LIMIT, weir};

/// Lines of `log` that are messages of the `chatty` plugin (runs of `x`).
fn plugin_messages(log: &str) -> usize {
    log.lines().filter(|line| line.contains("xxxxxxxx")).count()
}

/// The number before `what` in the run summary, e.g. `dropped("log messages dropped")`.
fn summary_count(log: &str, what: &str) -> u64 {
    let at = log
        .find(&format!(" {what}"))
        .unwrap_or_else(|| panic!("no {what:?} in: {log}"));
    let number = log[..at].rsplit([' ', ',', '(']).next().unwrap();
    number
        .parse()
        .unwrap_or_else(|_| panic!("{number:?} before {what:?}"))
}

#[test]
fn log_budget_obeyed() {
    let run = run(plugins::CHATTY, "map", "", &["log 50 100"]);
    assert_ok(&run);
    assert_eq!(run.out, ["log 50 100"]);
    assert_eq!(plugin_messages(&run.stderr), 50, "{}", run.stderr);
    assert_eq!(summary_count(&run.stderr, "log messages dropped"), 0);
}

#[test]
fn log_budget_violated_drops_and_counts_the_excess() {
    // The issue's flood: many 64 KiB messages. Each is cut to 4 KiB, and the
    // default budget (100 messages, 64 KiB per second) lets a few through.
    let count = 20_000;
    let line = format!("log {count} 65536");
    let run = run(plugins::CHATTY, "map", "limits = { timeout = \"60s\" }", &[&line]);
    assert_ok(&run);
    assert_eq!(run.out, [line.as_str()]);
    let written = plugin_messages(&run.stderr);
    let dropped = summary_count(&run.stderr, "log messages dropped");
    assert_eq!(written as u64 + dropped, count, "{written} written");
    assert!((16..200).contains(&written), "{written} written");
    assert!(
        run.stderr.len() < 1 << 20,
        "weir wrote {} bytes to stderr",
        run.stderr.len()
    );
    assert!(
        run.stderr
            .contains(&format!("stage `out`: {dropped} log messages dropped")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("the plugin writes more log than its stage allows"),
        "{}",
        run.stderr
    );
}

#[test]
fn log_budget_is_configurable() {
    let by_count = run(
        plugins::CHATTY,
        "map",
        "limits = { log-messages-per-second = 5 }",
        &["log 50 20"],
    );
    assert_ok(&by_count);
    let written = plugin_messages(&by_count.stderr);
    let dropped = summary_count(&by_count.stderr, "log messages dropped");
    assert_eq!(written as u64 + dropped, 50);
    assert!((5..10).contains(&written), "{written} written");

    let by_bytes = run(
        plugins::CHATTY,
        "map",
        "limits = { log-bytes-per-second = \"1KiB\" }",
        &["log 50 100"],
    );
    assert_ok(&by_bytes);
    let written = plugin_messages(&by_bytes.stderr);
    assert_eq!(
        written as u64 + summary_count(&by_bytes.stderr, "log messages dropped"),
        50
    );
    assert!((10..20).contains(&written), "{written} written");
}

#[test]
fn plugin_stdout_is_captured_not_printed() {
    // 100 MB to stdout: none of it reaches weir's own stdout or its log.
    let run = run(
        plugins::CHATTY,
        "map",
        "limits = { timeout = \"60s\" }",
        &["stdout 100000 1000"],
    );
    assert_ok(&run);
    assert_eq!(run.out, ["stdout 100000 1000"]);
    assert_eq!(plugin_messages(&run.stderr), 0, "{}", run.stderr);
}

#[test]
fn plugin_stdout_is_quoted_when_the_plugin_traps() {
    let run = run(plugins::CHATTY, "map", "", &["stdout 3 20 panic"]);
    assert_stopped_by(&run, "panic");
    assert!(run.stderr.contains("plugin stdout:\nfirst"), "{}", run.stderr);
    assert!(
        run.stderr.contains("chatty: panic after writing to stdout"),
        "{}",
        run.stderr
    );
}

#[test]
fn plugin_stderr_is_bounded_when_quoted() {
    // 100 MB to stderr, then a panic: the error quotes the last 16 KiB.
    let run = run(
        plugins::CHATTY,
        "map",
        "limits = { timeout = \"60s\" }",
        &["stderr 100000 1000 panic"],
    );
    assert_stopped_by(&run, "panic");
    assert!(run.stderr.contains("plugin stderr:"), "{}", run.stderr);
    assert!(run.stderr.contains("chatty: panic after writing to stderr"));
    assert!(run.stderr.contains("\nlastxxx"), "the tail is kept");
    assert!(!run.stderr.contains("\nfirstxxx"), "the head is not");
    assert!(
        run.stderr.len() < 64 << 10,
        "weir wrote {} bytes to stderr",
        run.stderr.len()
    );
}

/// Files in `dir/in` (one per batch, deterministic clock) → `bulk`
/// (map-partitions, one partition, `limits`) → `then` (extra stages reading
/// `out`) → files sink of stream `sink` in `dir/out`. Returns the run.
fn run_bulk(dir: &Path, limits: &str, then: &str, sink: &str) -> std::process::Output {
    let text = format!(
        r#"
[pipeline]
name = "bulk"
partitions = 1
batch-interval = "1s"
clock = "deterministic"

[plugins]
bulk = {bulk:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "out"
input = "lines"
op = "map-partitions"
plugin = "bulk"
limits = {{ {limits} }}
{then}
[[sink]]
input = "{sink}"
type = "files"
path = {out:?}
"#,
        bulk = plugins::BULK,
        input = dir.join("in").display().to_string(),
        out = dir.join("out").display().to_string(),
    );
    let file = write_pipeline(dir, "bulk.toml", &text);
    weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT)
}

/// Writes `lines` lines of 1,023 bytes (1 KiB with the newline) to `dir/in/a.txt`.
fn write_kib_lines(dir: &Path, lines: usize) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let line = format!("{}\n", "a".repeat(1023));
    std::fs::write(dir.join("in/a.txt"), line.repeat(lines)).unwrap();
}

fn sink_values(dir: &Path) -> Vec<String> {
    sink_lines(&dir.join("out"))
        .into_iter()
        .map(|(_, line)| line)
        .collect()
}

#[test]
fn input_size_obeyed_by_a_large_partition() {
    // 32 MiB of records in one map-partitions call, at a 64 MiB memory limit.
    let dir = scratch();
    write_kib_lines(dir.path(), 32 << 10);
    let output = run_bulk(dir.path(), "memory = \"64MiB\"", "", "out");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        sink_values(dir.path()),
        [format!("records={} bytes={}", 32 << 10, (32 << 10) * 1023)]
    );
}

#[test]
fn input_size_violated_by_a_partition_larger_than_the_memory() {
    // 80 MiB of records for a 64 MiB plugin: refused before the call, with
    // the limit to raise (it used to trap inside the plugin's allocator).
    let dir = scratch();
    write_kib_lines(dir.path(), 80 << 10);
    let output = run_bulk(dir.path(), "memory = \"64MiB\"", "", "out");
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("input too large"), "{log}");
    assert!(log.contains("memory limit of 67108864 bytes"), "{log}");
    assert!(log.contains("raise `memory`"), "{log}");
    assert!(
        log.contains("stage `out`") && log.contains("partition 0"),
        "{log}"
    );
    assert!(sink_values(dir.path()).is_empty());
}

/// Counts the records of stream `out` (one group: they have no key).
const COUNT_OUT: &str = r#"
[[stage]]
name = "counted"
input = "out"
op = "reduce-by-key"
reducer = "count"
"#;

#[test]
fn output_size_obeyed_past_wasmtimes_default_copy_budget() {
    // 130 MiB out of one call: more than wasmtime copies by default
    // (128 MiB), within what this stage's limits allow. (The plugin's output
    // buffer grows by doubling, so it needs about three times that in memory.)
    let dir = scratch();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/a.txt"), "emit 130 1\n").unwrap();
    let output = run_bulk(
        dir.path(),
        "memory = \"1GiB\", output-bytes-ratio = 100000000",
        COUNT_OUT,
        "counted",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(sink_values(dir.path()), ["130"]);
}

#[test]
fn output_size_violated_gets_the_output_limit_error() {
    // The same 130 MiB with a ratio that allows about 100 MB: Weir's own
    // output-limit error naming the limit to raise, not wasmtime's
    // "too much data is being copied".
    let dir = scratch();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/a.txt"), "emit 130 1\n").unwrap();
    let output = run_bulk(
        dir.path(),
        "memory = \"1GiB\", output-bytes-ratio = 10000000",
        COUNT_OUT,
        "counted",
    );
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("output limit"), "{log}");
    assert!(log.contains("raise `output-bytes-ratio`"), "{log}");
    assert!(!log.contains("too much data"), "{log}");
    assert!(sink_values(dir.path()).is_empty());
}

/// Runs `weir ARGS` to completion (failing the test after [`LIMIT`]);
/// returns its exit code, its stderr and its peak resident set size in
/// bytes as the OS reports it (`wait4`'s `ru_maxrss`).
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which reads its rusage"
)]
fn run_measured(args: &[&str]) -> (Option<i32>, String, u64) {
    use std::io::Read;

    let mut child = weir().spawn(args);
    let mut err = child.stderr.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let drain = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let pid = child.id() as libc::pid_t;
    let deadline = std::time::Instant::now() + LIMIT;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our child, not yet reaped (std's `Child` never
        // waited for it); `status` and `usage` are valid for writes.
        let waited = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(waited >= 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if waited == pid {
            break (status, usage);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weir did not finish within {LIMIT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let _ = drain.join();
    // Linux reports ru_maxrss in KiB.
    (code, reader.join().unwrap(), usage.ru_maxrss as u64 * 1024)
}

/// An update-state-by-key pipeline over `dir/in` (JSON lines keyed by `k`)
/// whose `big-state` plugin keeps for each key a state of the size its
/// value `v` asks for, with `state-memory` in `dir/out`.
fn big_state_pipeline(dir: &Path, state_memory: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "spill"
partitions = 2
batch-interval = "1s"
clock = "deterministic"

[plugins]
key-by = {key_by:?}
big-state = {big_state:?}

[[source]]
name = "events"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "keyed"
input = "events"
op = "map"
plugin = "key-by"
config = {{ field = "k", value-field = "v" }}

[[stage]]
name = "states"
input = "keyed"
op = "update-state-by-key"
plugin = "big-state"
state-memory = "{state_memory}"

[[sink]]
input = "states"
type = "files"
path = {out:?}
"#,
        key_by = plugins::JSON_KEY_BY,
        big_state = plugins::BIG_STATE,
        input = dir.join("in").display().to_string(),
        out = dir.join("out").display().to_string(),
    );
    write_pipeline(dir, "spill.toml", &text)
}

#[test]
fn spilled_state_stays_on_disk_peak_rss_obeys_state_memory() {
    // The issue's pipeline, shorter: 16 new keys of 1 MiB of state per
    // batch for 32 batches (512 MiB of state) with 32 MiB of state-memory.
    // With redb's default cache (1 GiB per spill file) what was spilled came
    // back into memory as cache: 1.4 GB peak RSS for 40 such batches. Now
    // each spill file caches at most an eighth of its partition's share.
    let dir = scratch();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let (batches, keys) = (32, 16);
    for batch in 0..batches {
        let lines: String = (0..keys)
            .map(|k| format!("{{\"k\":\"key-{:05}\",\"v\":1}}\n", batch * keys + k))
            .collect();
        std::fs::write(dir.path().join(format!("in/{batch:03}.jsonl")), lines).unwrap();
    }
    let file = big_state_pipeline(dir.path(), "32MiB");
    let (code, log, peak) = run_measured(&["run", "--available-now", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{log}");
    let total = batches * keys;
    assert!(
        log.contains(&format!("state: {total} keys (")),
        "every key keeps its state: {log}"
    );
    let spilled = summary_count(&log, "on disk)");
    assert!(spilled > total as u64 * 9 / 10, "{spilled} keys on disk: {log}");
    let mut outputs: Vec<String> = sink_values(dir.path());
    outputs.sort();
    let mut expected: Vec<String> = (0..total).map(|k| format!("key-{k:05} 0 1048576")).collect();
    expected.sort();
    assert_eq!(outputs, expected);
    // 512 MiB of state, 32 MiB of state-memory: the peak stays far below
    // the state's size (measured ~200 MB: the process itself, the plugins'
    // instances, a batch in flight and the state-memory).
    assert!(
        peak < 400 << 20,
        "peak RSS {} MiB with 32 MiB of state-memory and 512 MiB of state",
        peak >> 20
    );
}

/// A word count over a socket source in connect mode to `port` with the
/// extra source keys `keys`, in `dir`.
fn socket_wordcount(dir: &Path, port: u16, keys: &str) -> std::path::PathBuf {
    let source =
        format!("type = \"socket\"\naddress = \"127.0.0.1:{port}\"\nmax-backoff = \"200ms\"\n{keys}");
    let pipeline = super::wordcount_pipeline(&source, &dir.join("out"), 2);
    write_pipeline(dir, "p.toml", &pipeline)
}

#[test]
fn available_now_socket_connect_timeout_obeyed() {
    // The server comes up after 1 s, within the 20 s connect-timeout.
    let dir = scratch();
    let port = weir_tests::free_port();
    let file = socket_wordcount(dir.path(), port, "connect-timeout = \"20s\"");
    let child = weir().spawn(&["run", "--available-now", file.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    std::io::Write::write_all(&mut stream, b"late but welcome\n").unwrap();
    drop(stream);
    let output = weir_tests::wait_output(child, LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        weir_tests::summed_counts(&dir.path().join("out")),
        weir_tests::word_counts("late but welcome")
    );
}

#[test]
fn available_now_socket_connect_timeout_violated_by_a_port_nobody_listens_on() {
    let dir = scratch();
    let port = weir_tests::free_port();
    let file = socket_wordcount(dir.path(), port, "connect-timeout = \"1500ms\"");
    let started = std::time::Instant::now();
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    let elapsed = started.elapsed();
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "could not connect to 127.0.0.1:{port} within 1s 500ms (--available-now)"
        )),
        "{log}"
    );
    assert!(log.contains("connect-timeout"), "{log}");
    assert!(log.contains("last error: Connection refused"), "{log}");
    assert!(elapsed >= std::time::Duration::from_millis(1_500), "{elapsed:?}");
    assert!(elapsed < std::time::Duration::from_secs(30), "{elapsed:?}");
}

#[test]
fn available_now_socket_listen_timeout_violated_when_no_producer_comes() {
    let dir = scratch();
    let port = weir_tests::free_port();
    let file = socket_wordcount(dir.path(), port, "mode = \"listen\"\nconnect-timeout = \"1s\"");
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "no producer connected to 127.0.0.1:{port} within 1s (--available-now)"
        )),
        "{log}"
    );
}

/// Runs `big-state` over one key whose value asks for `mib` MiB of state,
/// at the default 64 MiB memory limit.
fn one_big_state(mib: usize) -> (std::process::Output, Vec<String>) {
    let dir = scratch();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(
        dir.path().join("in/a.jsonl"),
        format!("{{\"k\":\"big\",\"v\":{mib}}}\n"),
    )
    .unwrap();
    let file = big_state_pipeline(dir.path(), "256MiB");
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    (output, sink_values(dir.path()))
}

#[test]
fn state_call_memory_obeyed_by_16_mib_of_new_state() {
    // The SDK encodes a new state once, into room made for exactly it: 16 MiB
    // of state needs about 32 MiB of guest memory (it used to need ~4x, and
    // trapped at the default 64 MiB).
    let (output, values) = one_big_state(16);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(values, [format!("big 0 {}", 16 << 20)]);
}

#[test]
fn state_call_memory_violated_by_40_mib_of_new_state() {
    // The state itself and its encoding do not fit in 64 MiB together.
    let (output, values) = one_big_state(40);
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("memory limit"), "{log}");
    assert!(log.contains("stage `states`"), "{log}");
    assert!(values.is_empty());
}
