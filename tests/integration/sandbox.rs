//! Sandboxing and failure isolation: every limit obeyed just under it and
//! enforced just over it, capabilities denied unless granted, each failure
//! policy end to end with exact counts, and a misbehaving pipeline next to a
//! healthy one.

use std::path::{Path, PathBuf};

use weir_tests::{plugins, scratch, sink_lines, stderr, write_pipeline};

use super::{LIMIT, weir};

/// A pipeline: files in `input` → `op` with `plugin` (extra stage keys in
/// `stage`) → files sink at `out` (and the dead letters at `out-dead` when
/// the stage dead-letters).
fn pipeline(plugin: &str, op: &str, stage: &str, input: &Path, out: &Path) -> String {
    let dead = if stage.contains("dead-letter") {
        format!(
            "[[sink]]\ninput = \"dead-letters\"\ntype = \"files\"\npath = {:?}\n",
            format!("{}-dead", out.display())
        )
    } else {
        String::new()
    };
    format!(
        r#"
[pipeline]
name = "sandboxed"
partitions = 1
batch-interval = "50ms"

[plugins]
fixture = {plugin:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}

[[stage]]
name = "out"
input = "lines"
op = "{op}"
plugin = "fixture"
{stage}

[[sink]]
input = "out"
type = "files"
path = {out:?}
{dead}
"#,
        input = input.display().to_string(),
        out = out.display().to_string(),
    )
}

pub(super) struct Run {
    pub(super) status: Option<i32>,
    pub(super) stderr: String,
    pub(super) out: Vec<String>,
    dead: Vec<String>,
}

/// Runs `plugin` as `op` over `lines` with `--available-now`.
pub(super) fn run(plugin: &str, op: &str, stage: &str, lines: &[&str]) -> Run {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("input.txt"), lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let file = write_pipeline(dir.path(), "p.toml", &pipeline(plugin, op, stage, &input, &out));
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    let read = |path: PathBuf| sink_lines(&path).into_iter().map(|(_, line)| line).collect();
    Run {
        status: output.status.code(),
        stderr: stderr(&output),
        out: read(out.clone()),
        dead: read(PathBuf::from(format!("{}-dead", out.display()))),
    }
}

/// The engine itself never panics (a plugin's own panic message may appear
/// in warnings).
fn assert_no_engine_panic(stderr: &str) {
    assert!(!stderr.contains("thread 'main' panicked"), "{stderr}");
    assert!(!stderr.contains("worker task panicked"), "{stderr}");
    assert!(!stderr.contains("pipeline thread panicked"), "{stderr}");
}

pub(super) fn assert_ok(run: &Run) {
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert_no_engine_panic(&run.stderr);
}

pub(super) fn assert_stopped_by(run: &Run, kind: &str) {
    assert_eq!(run.status, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains(kind), "expected {kind:?} in: {}", run.stderr);
    assert!(
        run.stderr.contains("stage `out`") && run.stderr.contains("partition 0"),
        "{}",
        run.stderr
    );
    assert_no_engine_panic(&run.stderr);
}

#[test]
fn memory_limit_obeyed() {
    let run = run(
        plugins::MEMORY_HOG,
        "map",
        "limits = { memory = \"64MiB\" }",
        &["40"],
    );
    assert_ok(&run);
    assert_eq!(run.out, ["40"]);
}

#[test]
fn memory_limit_violated() {
    let run = run(
        plugins::MEMORY_HOG,
        "map",
        "limits = { memory = \"64MiB\" }",
        &["100"],
    );
    assert_stopped_by(&run, "memory limit");
}

#[test]
fn deadline_obeyed_by_a_slow_plugin() {
    let run = run(
        plugins::BUSY,
        "map",
        "limits = { timeout = \"1500ms\" }",
        &["600"],
    );
    assert_ok(&run);
    assert_eq!(run.out, ["600"]);
}

#[test]
fn sleeping_is_refused_instead_of_blocking_a_worker() {
    let started = std::time::Instant::now();
    let run = run(
        plugins::BUSY,
        "map",
        "limits = { timeout = \"60s\" }",
        &["sleep 3600000"],
    );
    assert_stopped_by(&run, "plugins may not sleep");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn deadline_violated_by_an_infinite_loop() {
    let started = std::time::Instant::now();
    let run = run(
        plugins::LOOP_FOREVER,
        "map",
        "limits = { timeout = \"300ms\" }",
        &["a", "loop"],
    );
    assert_stopped_by(&run, "deadline exceeded");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn fuel_obeyed() {
    let run = run(plugins::BUSY, "map", "limits = { fuel = 50000000 }", &["0", "1"]);
    assert_ok(&run);
    assert_eq!(run.out, ["0", "1"]);
}

#[test]
fn fuel_violated() {
    let run = run(
        plugins::LOOP_FOREVER,
        "map",
        "limits = { fuel = 5000000, timeout = \"60s\" }",
        &["a", "loop"],
    );
    assert_stopped_by(&run, "fuel exhausted");
}

#[test]
fn stack_obeyed() {
    let run = run(plugins::DEEP_RECURSION, "map", "", &["1000"]);
    assert_ok(&run);
    assert_eq!(run.out, ["1000"]);
}

#[test]
fn stack_violated() {
    let run = run(plugins::DEEP_RECURSION, "map", "", &["100000000"]);
    assert_stopped_by(&run, "stack overflow");
}

#[test]
fn output_limit_obeyed() {
    let run = run(
        plugins::FLOOD,
        "flat-map",
        "limits = { output-records-ratio = 10 }",
        &["900"],
    );
    assert_ok(&run);
    assert_eq!(run.out.len(), 900);
}

#[test]
fn output_limit_violated() {
    let run = run(
        plugins::FLOOD,
        "flat-map",
        "limits = { output-records-ratio = 10 }",
        &["1200"],
    );
    assert_stopped_by(&run, "output limit");
}

#[test]
fn capabilities_are_denied_unless_granted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = scratch();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("lookup.txt"), "granted contents").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret contents").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), data.join("escape.txt")).unwrap();
    let connect = format!("connect 127.0.0.1:{port}");
    let probes = [
        "read /etc/passwd",
        "list /",
        connect.as_str(),
        "env HOME",
        "env GREETING",
        "args",
        "read /data/lookup.txt",
        "read /data/../secret.txt",
        "read /data/escape.txt",
    ];
    // Nothing granted: everything denied, including /data.
    let denied = run(plugins::PROBE_CAPABILITIES, "map", "", &probes);
    assert_ok(&denied);
    assert_eq!(denied.out.len(), probes.len());
    for line in &denied.out {
        assert!(line.starts_with("denied:"), "{line} (all: {:?})", denied.out);
    }
    // A directory and one variable granted: only those work, and the
    // directory cannot be escaped.
    let stage = format!(
        "read-dir = {:?}\nenv = {{ GREETING = \"hello\" }}",
        data.display().to_string()
    );
    let granted = run(plugins::PROBE_CAPABILITIES, "map", &stage, &probes);
    assert_ok(&granted);
    let results: Vec<(&str, &str)> = probes
        .iter()
        .copied()
        .zip(granted.out.iter().map(String::as_str))
        .collect();
    for (probe, result) in &results {
        let expected_ok = matches!(*probe, "env GREETING" | "read /data/lookup.txt");
        assert_eq!(result.starts_with("ok:"), expected_ok, "{probe} → {result}");
    }
    assert!(granted.out.contains(&"ok: hello".to_owned()), "{:?}", granted.out);
    assert!(
        granted.out.contains(&"ok: granted contents".to_owned()),
        "{:?}",
        granted.out
    );
    drop(listener);
}

const TEN: [&str; 10] = ["a", "b", "fail", "c", "d", "e", "fail", "f", "g", "h"];

#[test]
fn policy_fail_stops_the_pipeline() {
    let run = run(plugins::FAIL_ON, "map", "on-error = \"fail\"", &TEN);
    assert_stopped_by(&run, "fail-on: refusing fail");
    assert!(run.out.is_empty());
}

#[test]
fn policy_skip_batch_drops_the_partition_batch_and_counts_it() {
    let run = run(plugins::FAIL_ON, "map", "on-error = \"skip-batch\"", &TEN);
    assert_ok(&run);
    assert!(run.out.is_empty(), "{:?}", run.out);
    assert!(
        run.stderr.contains("1 batches (10 records) skipped"),
        "{}",
        run.stderr
    );
}

#[test]
fn policy_dead_letter_sends_only_the_failing_records() {
    let run = run(plugins::FAIL_ON, "map", "on-error = \"dead-letter\"", &TEN);
    assert_ok(&run);
    let mut delivered = run.out.clone();
    delivered.sort();
    assert_eq!(delivered, ["a", "b", "c", "d", "e", "f", "g", "h"]);
    assert_eq!(run.dead.len(), 2, "{:?}", run.dead);
    for entry in &run.dead {
        for field in [
            "\"stage\":\"out\"",
            "\"batch\":0",
            "\"value\":\"fail\"",
            "fail-on: refusing fail",
        ] {
            assert!(entry.contains(field), "{field} missing in {entry}");
        }
    }
    assert!(run.stderr.contains("2 records dead-lettered"), "{}", run.stderr);
}

#[test]
fn policy_dead_letter_after_a_trap_sends_the_whole_partition_batch() {
    let lines = ["a", "b", "panic", "c"];
    let run = run(
        plugins::PANIC_ON,
        "map",
        "on-error = \"dead-letter\"\nretries = 2",
        &lines,
    );
    assert_ok(&run);
    assert!(run.out.is_empty(), "{:?}", run.out);
    assert_eq!(run.dead.len(), 4, "{:?}", run.dead);
    assert!(
        run.dead.iter().all(|e| e.contains("panic-on: found panic")),
        "{:?}",
        run.dead
    );
    assert!(run.stderr.contains("2 retries"), "{}", run.stderr);
    assert!(run.stderr.contains("4 records dead-lettered"), "{}", run.stderr);
}

/// A pipeline whose stage fails on almost every batch (`fail-on` triggered by
/// the generator's most frequent word), skipping those batches; `quarantine`
/// holds the stage's quarantine keys. Returns the pipeline file.
fn flaky_pipeline(dir: &Path, quarantine: &str) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "flaky"
partitions = 1
batch-interval = "50ms"
[plugins]
fail-on = {plugin:?}
[[source]]
name = "words"
type = "generator"
rate = 4000
words-per-line = 1
[[stage]]
name = "out"
input = "words"
op = "map"
plugin = "fail-on"
config = {{ trigger = "the" }}
on-error = "skip-batch"
{quarantine}
[[sink]]
input = "out"
type = "files"
path = {out:?}
"#,
        plugin = plugins::FAIL_ON,
        out = dir.join("out").display().to_string()
    );
    write_pipeline(dir, "p.toml", &text)
}

#[test]
fn a_stage_failing_batch_after_batch_is_quarantined() {
    let dir = scratch();
    let file = flaky_pipeline(dir.path(), "quarantine-after = 3");
    let output = weir().run(&["run", file.to_str().unwrap()], LIMIT);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("stage `out` quarantined after 3 consecutive batches"),
        "{message}"
    );
}

#[test]
fn a_looping_pipeline_does_not_stop_or_change_its_neighbour() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let text = weir_tests::sample_text(3_000, 9);
    std::fs::write(input.join("a.txt"), &text).unwrap();
    let healthy_out = dir.path().join("healthy");
    let healthy = super::wordcount_pipeline(
        &format!("type = \"files\"\npath = {:?}", input.display().to_string()),
        &healthy_out,
        2,
    );
    let looping = pipeline(
        plugins::LOOP_FOREVER,
        "map",
        "config = { trigger = \"loop\" }\nlimits = { timeout = \"200ms\" }\non-error = \"skip-batch\"",
        &input,
        &dir.path().join("looping"),
    )
    .replace("name = \"sandboxed\"", "name = \"looping\"");
    std::fs::write(input.join("b.txt"), "loop\nloop\n").unwrap();
    let healthy_file = write_pipeline(dir.path(), "healthy.toml", &healthy);
    let looping_file = write_pipeline(dir.path(), "looping.toml", &looping);
    let output = weir().run(
        &[
            "run",
            "--available-now",
            healthy_file.to_str().unwrap(),
            looping_file.to_str().unwrap(),
        ],
        LIMIT,
    );
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    let mut expected = weir_tests::word_counts(&text);
    *expected.entry("loop".into()).or_insert(0) += 2;
    assert_eq!(weir_tests::summed_counts(&healthy_out), expected);
    assert!(
        message.contains("pipeline `looping`") && message.contains("skipped"),
        "{message}"
    );
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Set in the environment of the probe's own process.
const LEAK_PROBE: &str = "WEIR_TEST_LEAK_PROBE";

#[test]
fn trapped_calls_do_not_leak_engine_memory() {
    // Measured in a process of its own: other tests of this binary allocate
    // in parallel and would move this process's resident memory.
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "sandbox::trapped_calls_leak_probe",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(LEAK_PROBE, "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("1 passed"), "the probe did not run: {log}");
}

/// The measurement of `trapped_calls_do_not_leak_engine_memory`, run by it
/// in a process of its own (does nothing otherwise).
#[test]
fn trapped_calls_leak_probe() {
    if std::env::var_os(LEAK_PROBE).is_none() {
        return;
    }
    use weir::operator::InstanceSlots;
    use weir::operator::instances::PluginUse;
    use weir::record::Batch;
    use weir::runtime::{InstanceLabel, Runtime, Sandbox};

    let runtime = Runtime::new(None).unwrap();
    let plugin = runtime.load_plugin(Path::new(plugins::PANIC_ON)).unwrap();
    let plugin_use = PluginUse::new(plugin, Vec::new(), InstanceLabel::default(), Sandbox::default());
    let mut slots = InstanceSlots::new();
    let trap = |slots: &mut InstanceSlots| {
        let mut batch = Batch::new();
        batch.push(None, b"fine", 0);
        batch.push(None, b"panic", 0);
        let result = plugin_use.call(slots, |instance| {
            let (_, output) = instance.transform(batch);
            output
        });
        let error = result.unwrap_err();
        assert!(error.poisons_instance(), "{error}");
        assert!(slots.is_empty(), "a trapped instance must be discarded");
    };
    for _ in 0..10 {
        trap(&mut slots);
    }
    let after_10 = resident_bytes();
    for _ in 0..1_000 {
        trap(&mut slots);
    }
    let after_1000 = resident_bytes();
    let growth = after_1000.saturating_sub(after_10);
    assert!(
        growth < 16 << 20,
        "resident memory grew by {} KiB over 990 trapped calls",
        growth / 1024
    );
}

#[test]
fn a_plugin_used_as_the_wrong_world_fails_its_check_and_its_calls() {
    use weir::operator::InstanceSlots;
    use weir::operator::instances::PluginUse;
    use weir::runtime::{InstanceLabel, PluginError, ReducerWorld, Runtime, Sandbox, TransformWorld};

    let runtime = Runtime::new(None).unwrap();
    let plugin = runtime.load_plugin(Path::new(plugins::SUM)).unwrap();
    let as_reducer = PluginUse::<ReducerWorld>::new(
        plugin.clone(),
        Vec::new(),
        InstanceLabel::default(),
        Sandbox::default(),
    );
    as_reducer.check().unwrap();

    let as_transform =
        PluginUse::<TransformWorld>::new(plugin, Vec::new(), InstanceLabel::default(), Sandbox::default());
    let error = as_transform.check().unwrap_err();
    assert!(matches!(error, PluginError::Contract { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("this plugin is a reducer, not a transform"),
        "{error}"
    );
    let mut slots = InstanceSlots::new();
    let called = as_transform.call(&mut slots, |instance| {
        let (_, output) = instance.transform(weir::record::Batch::new());
        output
    });
    assert!(called.is_err());
    assert!(slots.is_empty(), "no instance of the wrong world is kept");
}

#[test]
fn a_quarantined_stage_can_pause_the_pipeline_until_it_is_stopped() {
    let dir = scratch();
    let file = flaky_pipeline(dir.path(), "quarantine-after = 2\nquarantine = \"pause\"");
    let child = weir().spawn(&["run", file.to_str().unwrap()]);
    // Quarantined after two failing batches (~100 ms): then paused, not exited.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let mut child = child;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a paused pipeline keeps running until stopped"
    );
    weir_tests::terminate(&child);
    let output = weir_tests::wait_output(child, LIMIT);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("the pipeline is paused"), "{message}");
    assert!(
        message.contains("quarantined after 2 consecutive batches") && message.contains("paused"),
        "{message}"
    );
}

/// Sums `v` by `k` over three events (`a:1`, `b:x`, `a:2`) with `reducer`
/// under `on-error = "dead-letter"`; returns the totals and the dead letters.
fn sums_with_one_bad_value(reducer: &str) -> (Vec<String>, Vec<String>) {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(
        input.join("a.jsonl"),
        "{\"k\":\"a\",\"v\":1}\n{\"k\":\"b\",\"v\":\"x\"}\n{\"k\":\"a\",\"v\":2}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let text = format!(
        r#"
[pipeline]
name = "sums"
partitions = 1
[plugins]
key-by = {key_by:?}
decimal-sum = {sum:?}
[[source]]
name = "events"
type = "files"
path = {input:?}
[[stage]]
name = "keyed"
input = "events"
op = "map"
plugin = "key-by"
config = {{ field = "k", value-field = "v" }}
[[stage]]
name = "totals"
input = "keyed"
op = "reduce-by-key"
reducer = "{reducer}"
on-error = "dead-letter"
[[sink]]
input = "totals"
type = "files"
path = {out:?}
[[sink]]
input = "dead-letters"
type = "files"
path = {dead:?}
"#,
        reducer = reducer,
        key_by = plugins::JSON_KEY_BY,
        sum = plugins::SUM,
        input = input.display().to_string(),
        out = out.display().to_string(),
        dead = format!("{}-dead", out.display()),
    );
    let file = write_pipeline(dir.path(), "p.toml", &text);
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let totals = sink_lines(&out).into_iter().map(|(_, l)| l).collect();
    let dead = sink_lines(&PathBuf::from(format!("{}-dead", out.display())))
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    (totals, dead)
}

fn assert_only_the_bad_value_is_dead_lettered((totals, dead): (Vec<String>, Vec<String>)) {
    assert_eq!(totals, ["a\t3"]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].starts_with("b\t") && dead[0].contains("\"value\":\"x\""),
        "{dead:?}"
    );
}

#[test]
fn reducer_dead_letters_the_record_it_names_not_another() {
    // Regression: a reducer's record index counts values in grouped order; it
    // used to be read as a position in the partition, dead-lettering an
    // innocent record.
    assert_only_the_bad_value_is_dead_lettered(sums_with_one_bad_value("decimal-sum"));
}

#[test]
fn builtin_sum_dead_letters_only_the_value_that_is_not_a_number() {
    // A built-in reducer names the failing record too: only it goes to the
    // dead letters, the other values of the partition are summed.
    assert_only_the_bad_value_is_dead_lettered(sums_with_one_bad_value("sum"));
}
