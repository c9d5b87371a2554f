//! Plugins written in Python with the SDK in `guest-sdk/python`, built by
//! `weir plugin build` (componentize-py, installed into the tests' cache on
//! first use) from `plugins/python/`, run by the real `weir` binary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use weir_tests::{plugins, scratch, sink_lines, stderr, stdout, write_inputs, write_pipeline};

/// The deterministic `[pipeline]` table of the comparisons: one input file
/// a batch, whatever the wall clock does.
const DETERMINISTIC: &str = r#"batch-interval = "1s"
partitions = 3
clock = "deterministic"
start-time = 1000"#;

use crate::weir;

/// Builds `plugins/python/<name>` with `weir plugin build` (once per test
/// run) and returns the component.
fn python_plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/python");
        let names = [
            "split-words",
            "misbehave",
            "sum",
            "running-total",
            "sessionizer",
            "enrich",
        ];
        let dirs: Vec<String> = names
            .iter()
            .map(|name| root.join(name).display().to_string())
            .collect();
        let mut args = vec!["plugin", "build"];
        args.extend(dirs.iter().map(String::as_str));
        let output = weir().run(&args, Duration::from_secs(600));
        assert!(
            output.status.success(),
            "weir plugin build failed:\n{}",
            stderr(&output)
        );
        let paths: Vec<PathBuf> = stdout(&output).lines().map(PathBuf::from).collect();
        assert_eq!(paths.len(), names.len(), "one component per plugin: {paths:?}");
        names.iter().map(|n| n.to_string()).zip(paths).collect()
    });
    built
        .iter()
        .find(|(built, _)| built == name)
        .map(|(_, path)| path.clone())
        .unwrap_or_else(|| panic!("no Python plugin {name}"))
}

/// A word count over the files in `input`, one file a batch under the
/// deterministic clock (so two runs cut the same batches), with `plugin` as
/// split-words, into a `jsonl` files sink at `output`.
fn deterministic_wordcount(dir: &Path, name: &str, plugin: &Path, input: &str, output: &Path) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "{name}"
{DETERMINISTIC}

[plugins]
split-words = {plugin:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key"
reducer = "count"

[[sink]]
input = "counts"
type = "files"
path = {output:?}
format = "jsonl"
"#,
        plugin = plugin.display().to_string(),
        output = output.display().to_string(),
    );
    write_pipeline(dir, &format!("{name}.toml"), &text)
}

/// Every file the files sink wrote under `dir`, by relative path.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Asserts that the Rust and the Python runs wrote the same files, byte for byte.
fn assert_same_files(rust: &[(String, Vec<u8>)], python: &[(String, Vec<u8>)]) {
    assert_eq!(
        rust.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        python.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        "the same files"
    );
    for ((name, rust_bytes), (_, python_bytes)) in rust.iter().zip(python) {
        assert!(
            rust_bytes == python_bytes,
            "{name} differs between the Rust and the Python plugins"
        );
    }
}

#[test]
fn python_and_rust_split_words_give_byte_identical_word_counts() {
    let dir = scratch();
    let text = write_inputs(dir.path(), 4, 3000, 11);
    let input = dir.path().join("in").display().to_string();
    let mut outputs = Vec::new();
    for (name, plugin) in [
        ("rust", PathBuf::from(plugins::SPLIT_WORDS)),
        ("python", python_plugin("split-words")),
    ] {
        let output = dir.path().join(format!("out-{name}"));
        let pipeline = deterministic_wordcount(dir.path(), name, &plugin, &input, &output);
        crate::run_file_ok(&pipeline);
        outputs.push(tree(&output));
    }
    let (rust, python) = (&outputs[0], &outputs[1]);
    assert!(rust.len() >= 4 * 3, "four batches of three parts: {}", rust.len());
    // The counts are right, not only equal (the text has non-ASCII words).
    let counted: u64 = rust
        .iter()
        .flat_map(|(_, bytes)| std::str::from_utf8(bytes).unwrap().lines())
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["value"].as_str().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(counted, text.split_whitespace().count() as u64);
    assert_same_files(rust, python);
}

#[test]
fn python_and_rust_reducers_and_keyed_state_give_byte_identical_output() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for file in 0..4u64 {
        let lines: String = (0..300u64)
            .map(|i| {
                let n = file * 1000 + i;
                format!(
                    "{{\"k\":\"key{}\",\"v\":\"{}\"}}\n",
                    n * 7 % 23,
                    (n * 13 % 41) as i64 - 20
                )
            })
            .collect();
        std::fs::write(input.join(format!("{file:02}.jsonl")), lines).unwrap();
    }
    let mut outputs = Vec::new();
    for (language, sum, running_total) in [
        (
            "rust",
            PathBuf::from(plugins::SUM),
            PathBuf::from(plugins::RUNNING_TOTAL),
        ),
        ("python", python_plugin("sum"), python_plugin("running-total")),
    ] {
        let out = dir.path().join(format!("out-{language}"));
        let text = format!(
            r#"
[pipeline]
name = "keyed-{language}"
{DETERMINISTIC}

[plugins]
key-by = {key_by:?}
sum = {sum:?}
running-total = {running_total:?}

[[source]]
name = "raw"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "numbers"
input = "raw"
op = "map"
plugin = "key-by"
config = {{ field = "k", value-field = "v" }}

[[stage]]
name = "sums"
input = "numbers"
op = "reduce-by-key"
reducer = "sum"

[[stage]]
name = "totals"
input = "numbers"
op = "update-state-by-key"
plugin = "running-total"
partitions = 3

[[sink]]
name = "sums"
input = "sums"
type = "files"
path = {sums:?}
format = "jsonl"

[[sink]]
name = "totals"
input = "totals"
type = "files"
path = {totals:?}
format = "jsonl"
"#,
            key_by = plugins::JSON_KEY_BY,
            sum = sum.display().to_string(),
            running_total = running_total.display().to_string(),
            input = input.display().to_string(),
            sums = out.join("sums").display().to_string(),
            totals = out.join("totals").display().to_string(),
        );
        let pipeline = write_pipeline(dir.path(), &format!("{language}.toml"), &text);
        crate::run_file_ok(&pipeline);
        outputs.push(tree(&out));
    }
    let (rust, python) = (&outputs[0], &outputs[1]);
    assert!(
        rust.iter()
            .any(|(name, bytes)| name.starts_with("totals/") && !bytes.is_empty())
    );
    assert!(
        rust.iter()
            .any(|(name, bytes)| name.starts_with("sums/") && !bytes.is_empty())
    );
    assert_same_files(rust, python);
}

#[test]
fn python_and_rust_map_with_state_and_transform_with_give_byte_identical_output() {
    let dir = scratch();
    let (events, users) = (dir.path().join("events"), dir.path().join("users"));
    std::fs::create_dir_all(&events).unwrap();
    std::fs::create_dir_all(&users).unwrap();
    // Eight batches of events from a few users, some of whom pause long
    // enough to time out; reference rows for some users, one changing.
    for batch in 0..8u64 {
        let lines: String = (0..40u64)
            .filter(|i| (i * 7 + batch * 3) % 5 != 0)
            .map(|i| {
                let user = (i * 11 + batch * batch) % (3 + batch % 4);
                format!("{{\"user\":\"u{user}\",\"item\":\"i{i}\",\"n\":{}}}\n", i * batch)
            })
            .collect();
        std::fs::write(events.join(format!("b{batch:02}.jsonl")), lines).unwrap();
        let rows: String = (0..3u64)
            .map(|u| {
                format!(
                    "{{\"user\":\"u{}\",\"tier\":\"t{}\",\"city\":\"Øslo-{batch}\"}}\n",
                    u * 2,
                    u + batch
                )
            })
            .collect();
        std::fs::write(users.join(format!("b{batch:02}.jsonl")), rows).unwrap();
    }
    let mut outputs = Vec::new();
    for (language, sessionizer, enrich) in [
        (
            "rust",
            PathBuf::from(plugins::SESSIONIZER),
            PathBuf::from(plugins::ENRICH),
        ),
        ("python", python_plugin("sessionizer"), python_plugin("enrich")),
    ] {
        let out = dir.path().join(format!("out-{language}"));
        let text = format!(
            r#"
[pipeline]
name = "two-inputs-{language}"
{DETERMINISTIC}

[plugins]
key-by = {key_by:?}
sessionizer = {sessionizer:?}
enrich = {enrich:?}

[[source]]
name = "events-raw"
type = "files"
path = {events:?}
max-files-per-batch = 1

[[source]]
name = "users-raw"
type = "files"
path = {users:?}
max-files-per-batch = 1

[[stage]]
name = "events"
input = "events-raw"
op = "map"
plugin = "key-by"
config = {{ field = "user" }}

[[stage]]
name = "users"
input = "users-raw"
op = "map"
plugin = "key-by"
config = {{ field = "user" }}

[[stage]]
name = "sessions"
input = "events"
op = "map-with-state"
plugin = "sessionizer"
timeout = "2s"

[[stage]]
name = "enriched"
input = ["events", "users"]
op = "transform-with"
plugin = "enrich"

[[sink]]
name = "sessions"
input = "sessions"
type = "files"
path = {sessions:?}
format = "jsonl"

[[sink]]
name = "enriched"
input = "enriched"
type = "files"
path = {enriched:?}
format = "jsonl"
"#,
            key_by = plugins::JSON_KEY_BY,
            sessionizer = sessionizer.display().to_string(),
            enrich = enrich.display().to_string(),
            events = events.display().to_string(),
            users = users.display().to_string(),
            sessions = out.join("sessions").display().to_string(),
            enriched = out.join("enriched").display().to_string(),
        );
        let pipeline = write_pipeline(dir.path(), &format!("{language}.toml"), &text);
        crate::run_file_ok(&pipeline);
        outputs.push(tree(&out));
    }
    let (rust, python) = (&outputs[0], &outputs[1]);
    let lines = |prefix: &str| -> Vec<String> {
        rust.iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .flat_map(|(_, bytes)| {
                std::str::from_utf8(bytes)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    // Sessions ended (timed out) and events were enriched, in both runs.
    let sessions = lines("sessions/");
    assert!(
        sessions.iter().any(|line| line.contains(r#"\"events\":"#)),
        "{sessions:?}"
    );
    let enriched = lines("enriched/");
    assert!(enriched.iter().any(|line| line.contains("Øslo")), "{enriched:?}");
    assert!(enriched.iter().any(|line| !line.contains("tier")), "{enriched:?}");
    assert_same_files(rust, python);
}

/// Runs `plugins/python/misbehave` in `mode` (a map) over JSON events keyed
/// and timed by `json-key-by`, one of which contains `word` when `trigger`;
/// `limits` goes into the stage. Returns whether the run succeeded, its
/// stderr, and the `jsonl` records before and after the Python map.
fn misbehaving_run(mode: &str, limits: &str, trigger: bool) -> (bool, String, Vec<String>, Vec<String>) {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let fourth = if trigger {
        "this goes kaboom"
    } else {
        "this goes on"
    };
    let events: String = ["fine", "still fine", fourth, "never seen"]
        .iter()
        .enumerate()
        .map(|(i, text)| {
            format!(
                "{{\"k\":\"k{}\",\"v\":\"{text}\",\"t\":{}}}\n",
                i % 2,
                5000 + 7 * i
            )
        })
        .collect();
    std::fs::write(input.join("a.jsonl"), events).unwrap();
    let (keyed, checked) = (dir.path().join("keyed"), dir.path().join("checked"));
    let plugin = python_plugin("misbehave");
    let text = format!(
        r#"
[pipeline]
name = "misbehaves"
batch-interval = "100ms"
partitions = 1

[plugins]
key-by = {key_by:?}
misbehave = {plugin:?}

[[source]]
name = "raw"
type = "files"
path = {input:?}

[[stage]]
name = "events"
input = "raw"
op = "map"
plugin = "key-by"
config = {{ field = "k", value-field = "v", timestamp-field = "t" }}

[[stage]]
name = "checked"
input = "events"
op = "map"
plugin = "misbehave"
config = {{ word = "kaboom", mode = "{mode}" }}
{limits}

[[sink]]
name = "keyed"
input = "events"
type = "files"
path = {keyed:?}
format = "jsonl"

[[sink]]
name = "checked"
input = "checked"
type = "files"
path = {checked:?}
format = "jsonl"
"#,
        key_by = plugins::JSON_KEY_BY,
        plugin = plugin.display().to_string(),
        input = input.display().to_string(),
        keyed = keyed.display().to_string(),
        checked = checked.display().to_string(),
    );
    let pipeline = write_pipeline(dir.path(), "misbehaves.toml", &text);
    let run = weir().run(
        &["run", "--available-now", pipeline.to_str().unwrap()],
        Duration::from_secs(300),
    );
    let records = |dir: &Path| -> Vec<String> {
        let mut lines: Vec<String> = sink_lines(dir).into_iter().map(|(_, line)| line).collect();
        lines.sort();
        lines
    };
    (
        run.status.success(),
        stderr(&run),
        records(&keyed),
        records(&checked),
    )
}

#[test]
fn a_python_map_keeps_each_records_key_and_timestamp() {
    let (succeeded, err, keyed, checked) = misbehaving_run("raise", "", false);
    assert!(succeeded, "{err}");
    assert_eq!(keyed.len(), 4, "{keyed:?}");
    assert!(keyed[0].contains("\"key\":\"k0\""), "{keyed:?}");
    assert_eq!(
        checked, keyed,
        "a map that returns the value keeps key and timestamp"
    );
}

#[test]
fn a_python_plugin_that_raises_fails_the_run_with_its_traceback() {
    let (succeeded, err, _, _) = misbehaving_run("raise", "", true);
    assert!(!succeeded, "the run must fail: {err}");
    assert!(err.contains("Traceback (most recent call last)"), "{err}");
    assert!(
        err.contains("ValueError: found 'kaboom' in 'this goes kaboom'"),
        "{err}"
    );
    assert!(
        err.contains("in pass_through"),
        "the traceback names the function: {err}"
    );
}

#[test]
fn a_python_plugin_that_loops_or_allocates_without_end_is_stopped_by_its_limits() {
    for (mode, limits, error) in [
        ("loop", "limits = { timeout = \"300ms\" }", "deadline exceeded"),
        ("allocate", "limits = { memory = \"64MiB\" }", "memory limit"),
    ] {
        // Under the same limits, the plugin starts and runs: only the
        // trigger makes it misbehave.
        let (succeeded, err, _, checked) = misbehaving_run(mode, limits, false);
        assert!(succeeded, "{mode} without its trigger: {err}");
        assert_eq!(checked.len(), 4, "{mode}: {checked:?}");
        let (succeeded, err, _, _) = misbehaving_run(mode, limits, true);
        assert!(!succeeded, "{mode} must fail the run: {err}");
        assert!(err.contains(error), "{mode}: {err}");
    }
}
