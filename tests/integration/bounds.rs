//! Every resource a plugin or a source can use is bounded by configuration:
//! paired tests (obeyed / violated) for the log budget, captured stdout and
//! stderr, the data one call moves between host and guest, the memory of a
//! state call, spilled state's resident memory, and an available-now socket
//! that never connects.

use weir_tests::plugins;

use super::sandbox::{assert_ok, assert_stopped_by, run};

/// Lines of `log` that are messages of the `chatty` plugin (runs of `x`).
fn plugin_messages(log: &str) -> usize {
    log.lines().filter(|line| line.contains("xxxxxxxx")).count()
}

/// The number before `what` in the run summary, e.g. `dropped("log messages dropped")`.
fn summary_count(log: &str, what: &str) -> u64 {
    let at = log
        .find(&format!(" {what}"))
        .unwrap_or_else(|| panic!("no {what:?} in: {log}"));
    let number = log[..at].rsplit([' ', ',']).next().unwrap();
    number.parse().unwrap_or_else(|_| panic!("{number:?} before {what:?}"))
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
    // The flood: many 64 KiB messages. Each is cut to 4 KiB, and the
    // default budget (100 messages, 64 KiB per second) lets a few through.
    let count = 20_000;
    let line = format!("log {count} 65536");
    let run = run(plugins::CHATTY, "map", "limits = { timeout = \"60s\" }", &[&line]);
    assert_ok(&run);
    assert_eq!(run.out, [line.as_str()]);
    let written = plugin_messages(&run.stderr);
    let dropped = summary_count(&run.stderr, "log messages dropped");
    assert_eq!(written as u64 + dropped, count, "{written} written");
    assert!(written >= 16 && written < 200, "{written} written");
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
        run.stderr.contains("the plugin writes more log than its stage allows"),
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
    assert!(run.stderr.contains("chatty: panic after writing to stdout"), "{}", run.stderr);
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
