//! Plugins written in Python and JavaScript with the SDKs in
//! `guest-sdk/python` and `guest-sdk/js`, built by `weir plugin build`
//! (componentize-py and componentize-js, installed into the tests' cache on
//! first use) from `plugins/python/` and `plugins/js/`, run by the real
//! `weir` binary next to their Rust twins: the same pipelines give
//! byte-identical output in all three languages, and the sandbox's limits
//! and error policies treat them alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use weir_tests::{plugins, scratch, sink_lines, stderr, stdout, write_inputs, write_pipeline};

/// The deterministic `[pipeline]` table of the comparisons: one input file
/// a batch, whatever the wall clock does.
const DETERMINISTIC: &str = r#"batch-interval = "1s"
partitions = 3
clock = "deterministic"
start-time = 1000"#;

/// The languages whose plugins are compared, with Rust first.
const LANGUAGES: [&str; 3] = ["rust", "python", "js"];

use crate::weir;

/// Each plugin's name and component.
type Components = Vec<(String, PathBuf)>;

/// The files a run wrote: each one's path under the output and its bytes.
type Files = Vec<(String, Vec<u8>)>;

/// The component of plugin `name` in `language`: a Rust plugin built by
/// the tests' build script, or `plugins/<language>/<name>` built with `weir
/// plugin build` (every plugin of a language at once, once per test run).
fn plugin(language: &str, name: &str) -> PathBuf {
    if language == "rust" {
        let rust = match name {
            "split-words" => plugins::SPLIT_WORDS,
            "drop-stopwords" => plugins::DROP_STOPWORDS,
            "json-key-by" => plugins::JSON_KEY_BY,
            "sum" => plugins::SUM,
            "running-total" => plugins::RUNNING_TOTAL,
            "sessionizer" => plugins::SESSIONIZER,
            "enrich" => plugins::ENRICH,
            _ => panic!("no Rust twin named {name}"),
        };
        return PathBuf::from(rust);
    }
    static BUILT: OnceLock<Mutex<HashMap<String, Components>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let components = built
        .entry(language.to_owned())
        .or_insert_with(|| build_language(language));
    components
        .iter()
        .find(|(built, _)| built == name)
        .map(|(_, path)| path.clone())
        .unwrap_or_else(|| panic!("no {language} plugin {name}"))
}

/// Builds every plugin under `plugins/<language>` with one `weir plugin
/// build`; returns each one's name and component.
fn build_language(language: &str) -> Components {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins")
        .join(language);
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let dirs: Vec<String> = names
        .iter()
        .map(|name| root.join(name).display().to_string())
        .collect();
    let mut args = vec!["plugin", "build"];
    args.extend(dirs.iter().map(String::as_str));
    let output = weir().run(&args, Duration::from_secs(900));
    assert!(
        output.status.success(),
        "weir plugin build ({language}) failed:\n{}",
        stderr(&output)
    );
    let paths: Vec<PathBuf> = stdout(&output).lines().map(PathBuf::from).collect();
    assert_eq!(paths.len(), names.len(), "one component per plugin: {paths:?}");
    names.into_iter().zip(paths).collect()
}

/// A word count over the files in `input`, one file a batch under the
/// deterministic clock (so two runs cut the same batches), with `language`'s
/// split-words and drop-stopwords (a filter), into a `jsonl` files sink at
/// `output`.
fn deterministic_wordcount(dir: &Path, language: &str, input: &str, output: &Path) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "wordcount-{language}"
{DETERMINISTIC}

[plugins]
split-words = {split_words:?}
drop-stopwords = {drop_stopwords:?}

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
name = "kept"
input = "words"
op = "filter"
plugin = "drop-stopwords"

[[stage]]
name = "counts"
input = "kept"
op = "reduce-by-key"
reducer = "count"

[[sink]]
input = "counts"
type = "files"
path = {output:?}
format = "jsonl"
"#,
        split_words = plugin(language, "split-words").display().to_string(),
        drop_stopwords = plugin(language, "drop-stopwords").display().to_string(),
        output = output.display().to_string(),
    );
    write_pipeline(dir, &format!("wordcount-{language}.toml"), &text)
}

/// Every file the files sink wrote under `dir`, by relative path.
fn tree(dir: &Path) -> Files {
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

/// Asserts that every language's run wrote the same files as the Rust run
/// (the first), byte for byte.
fn assert_same_files(outputs: &[(&str, Files)]) {
    let (_, rust) = &outputs[0];
    for (language, other) in &outputs[1..] {
        assert_eq!(
            rust.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            other.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            "the same files in Rust and {language}"
        );
        for ((name, rust_bytes), (_, bytes)) in rust.iter().zip(other) {
            assert!(
                rust_bytes == bytes,
                "{name} differs between the Rust and the {language} plugins"
            );
        }
    }
}

/// The lines of the files under `prefix` in a run's output.
fn lines_under(files: &[(String, Vec<u8>)], prefix: &str) -> Vec<String> {
    files
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .flat_map(|(_, bytes)| {
            std::str::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The counts a word count's `jsonl` files hold, summed per word over its
/// batches.
fn summed_counts(files: &Files) -> HashMap<String, u64> {
    let mut counted: HashMap<String, u64> = HashMap::new();
    for line in lines_under(files, "") {
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        *counted
            .entry(record["key"].as_str().unwrap().to_owned())
            .or_default() += record["value"].as_str().unwrap().parse::<u64>().unwrap();
    }
    counted
}

#[test]
fn word_counts_with_a_filter_are_byte_identical_in_rust_python_and_javascript() {
    let dir = scratch();
    let mut text = write_inputs(dir.path(), 4, 3000, 11);
    // A fifth batch of plain ASCII words with single spaces (the JavaScript
    // split-words' fast path; the others have non-ASCII words).
    let plain: String = weir_tests::sample_text(2000, 5)
        .replace("über", "uber")
        .replace("naïve", "naive");
    std::fs::write(dir.path().join("in/zz-plain.txt"), &plain).unwrap();
    text.push_str(&plain);
    let input = dir.path().join("in").display().to_string();
    let mut outputs = Vec::new();
    for language in LANGUAGES {
        let output = dir.path().join(format!("out-{language}"));
        let pipeline = deterministic_wordcount(dir.path(), language, &input, &output);
        crate::run_file_ok(&pipeline);
        outputs.push((language, tree(&output)));
    }
    let rust = &outputs[0].1;
    assert!(rust.len() >= 5 * 3, "five batches of three parts: {}", rust.len());
    // The counts are right, not only equal (the text has non-ASCII words,
    // and stopwords the filter drops).
    let counted = summed_counts(rust);
    let mut expected: HashMap<String, u64> = HashMap::new();
    for word in text
        .split_whitespace()
        .filter(|word| !["the", "a"].contains(word))
    {
        *expected.entry(word.to_owned()).or_default() += 1;
    }
    assert_eq!(counted, expected);
    assert!(counted.contains_key("naïve") && !counted.contains_key("the"));
    assert_same_files(&outputs);
}

#[test]
fn json_keying_reducers_and_keyed_state_are_byte_identical_in_rust_python_and_javascript() {
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
    for language in LANGUAGES {
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
            key_by = plugin(language, "json-key-by").display().to_string(),
            sum = plugin(language, "sum").display().to_string(),
            running_total = plugin(language, "running-total").display().to_string(),
            input = input.display().to_string(),
            sums = out.join("sums").display().to_string(),
            totals = out.join("totals").display().to_string(),
        );
        let pipeline = write_pipeline(dir.path(), &format!("{language}.toml"), &text);
        crate::run_file_ok(&pipeline);
        outputs.push((language, tree(&out)));
    }
    let rust = &outputs[0].1;
    // The last running total of each key is the sum of all its values.
    let mut sums: HashMap<String, i64> = HashMap::new();
    for line in lines_under(rust, "sums/") {
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        *sums
            .entry(record["key"].as_str().unwrap().to_owned())
            .or_default() += record["value"].as_str().unwrap().parse::<i64>().unwrap();
    }
    let mut totals: HashMap<String, (i64, i64)> = HashMap::new();
    for line in lines_under(rust, "totals/") {
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        let batch_total = (
            record["timestamp"].as_i64().unwrap(),
            record["value"].as_str().unwrap().parse::<i64>().unwrap(),
        );
        let kept = totals
            .entry(record["key"].as_str().unwrap().to_owned())
            .or_insert(batch_total);
        *kept = (*kept).max(batch_total);
    }
    assert_eq!(sums.len(), 23, "{sums:?}");
    let last_totals: HashMap<String, i64> =
        totals.into_iter().map(|(key, (_, total))| (key, total)).collect();
    assert_eq!(last_totals, sums);
    assert_same_files(&outputs);
}

#[test]
fn map_with_state_and_transform_with_are_byte_identical_in_rust_python_and_javascript() {
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
    for language in LANGUAGES {
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
            key_by = plugin(language, "json-key-by").display().to_string(),
            sessionizer = plugin(language, "sessionizer").display().to_string(),
            enrich = plugin(language, "enrich").display().to_string(),
            events = events.display().to_string(),
            users = users.display().to_string(),
            sessions = out.join("sessions").display().to_string(),
            enriched = out.join("enriched").display().to_string(),
        );
        let pipeline = write_pipeline(dir.path(), &format!("{language}.toml"), &text);
        crate::run_file_ok(&pipeline);
        outputs.push((language, tree(&out)));
    }
    let rust = &outputs[0].1;
    // Sessions ended (timed out) and events were enriched.
    let sessions = lines_under(rust, "sessions/");
    assert!(
        sessions.iter().any(|line| line.contains(r#"\"events\":"#)),
        "{sessions:?}"
    );
    let enriched = lines_under(rust, "enriched/");
    assert!(enriched.iter().any(|line| line.contains("Øslo")), "{enriched:?}");
    assert!(enriched.iter().any(|line| !line.contains("tier")), "{enriched:?}");
    assert_same_files(&outputs);
}

/// Runs `plugins/<language>/misbehave` in `mode` (a map) over JSON events
/// keyed and timed by `json-key-by`, one of which contains `word` when
/// `trigger`; `limits` goes into the stage. Returns whether the run
/// succeeded, its stderr, and the `jsonl` records before and after the map.
fn misbehaving_run(
    language: &str,
    mode: &str,
    limits: &str,
    trigger: bool,
) -> (bool, String, Vec<String>, Vec<String>) {
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
    let misbehave = plugin(language, "misbehave");
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
        plugin = misbehave.display().to_string(),
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
fn python_and_javascript_maps_keep_each_records_key_and_timestamp() {
    for language in ["python", "js"] {
        let (succeeded, err, keyed, checked) = misbehaving_run(language, "loop", "", false);
        assert!(succeeded, "{language}: {err}");
        assert_eq!(keyed.len(), 4, "{keyed:?}");
        assert!(keyed[0].contains("\"key\":\"k0\""), "{keyed:?}");
        assert_eq!(
            checked, keyed,
            "{language}: a map that returns the value keeps key and timestamp"
        );
    }
}

#[test]
fn a_python_plugin_that_raises_fails_the_run_with_its_traceback() {
    let (succeeded, err, _, _) = misbehaving_run("python", "raise", "", true);
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
fn a_javascript_plugin_that_throws_fails_the_run_with_its_error_and_stack() {
    let (succeeded, err, _, _) = misbehaving_run("js", "throw", "", true);
    assert!(!succeeded, "the run must fail: {err}");
    assert!(
        err.contains(r#"Error: found "kaboom" in "this goes kaboom""#),
        "{err}"
    );
    assert!(
        err.contains("explode@") && err.contains("app.js:"),
        "the stack names the function and the module: {err}"
    );
}

#[test]
fn python_and_javascript_plugins_that_loop_or_allocate_without_end_are_stopped_by_their_limits() {
    for language in ["python", "js"] {
        for (mode, limits, error) in [
            ("loop", "limits = { timeout = \"300ms\" }", "deadline exceeded"),
            ("allocate", "limits = { memory = \"64MiB\" }", "memory limit"),
        ] {
            // Under the same limits, the plugin starts and runs: only the
            // trigger makes it misbehave.
            let (succeeded, err, _, checked) = misbehaving_run(language, mode, limits, false);
            assert!(succeeded, "{language} {mode} without its trigger: {err}");
            assert_eq!(checked.len(), 4, "{language} {mode}: {checked:?}");
            let (succeeded, err, _, _) = misbehaving_run(language, mode, limits, true);
            assert!(!succeeded, "{language} {mode} must fail the run: {err}");
            assert!(err.contains(error), "{language} {mode}: {err}");
        }
    }
}

/// Builds the script plugin whose one module, `file`, is `source`, in
/// `plugin_dir`, with `weir plugin build`; returns the component's path.
fn build_script(plugin_dir: &Path, file: &str, source: &str) -> String {
    std::fs::create_dir_all(plugin_dir).unwrap();
    std::fs::write(plugin_dir.join(file), source).unwrap();
    let built = weir().run(
        &["plugin", "build", &plugin_dir.display().to_string()],
        Duration::from_secs(900),
    );
    assert!(built.status.success(), "{file}: {}", stderr(&built));
    stdout(&built).trim().to_owned()
}

/// A batch flat-map that cuts each line at commas with the SDK's
/// split emitter (keyed by itself when the line starts with `k`), and emits
/// a line that starts with `#` whole, under the key `comment`: split
/// records gathered, then laid out as records when another emit follows.
const SPLIT_FIELDS_JS: &str = r##"import * as weir from "weir";
weir.batch("flat-map", (batch, out) => {
  for (let i = 0; i < batch.length; i++) {
    const line = weir.text(batch.value(i));
    if (line.startsWith("#")) out.emitRecord("comment", line, batch.timestamp(i));
    else out.emitSplit(line, ",", { keyed: line.startsWith("k"), timestamp: batch.timestamp(i) });
  }
}, { name: "split-fields" });
"##;

/// [`SPLIT_FIELDS_JS`] in Python.
const SPLIT_FIELDS_PY: &str = r##"import weir

@weir.batch("flat-map", name="split-fields")
def split_fields(batch, out):
    for i in range(len(batch.timestamps)):
        line = batch.data[batch.ends[2 * i] : batch.ends[2 * i + 1]]
        if line.startswith(b"#"):
            out.emit_record(b"comment", line, batch.timestamps[i])
        else:
            out.emit_split(line, b",", keyed=line.startswith(b"k"), timestamp=batch.timestamps[i])
"##;

#[test]
fn split_emits_mixed_with_other_emits_keep_every_record_in_order_in_python_and_javascript() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    // First chunks of unkeyed lines only (returned as split records and cut
    // by the host), then runs of them with keyed lines and comments in
    // between (laid out by the SDK), with empty lines and empty fields
    // (empty records) and non-ASCII text in both.
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!("a{i},,naïve{i},\n"));
        if i % 50 == 7 {
            text.push('\n');
        }
    }
    for i in 0..300 {
        text.push_str(&match i % 6 {
            0 | 1 => format!("a{i},b{i},,c{i}\n"),
            2 => format!("k{i},über{i}\n"),
            3 => "\n".to_owned(),
            4 => format!("# note {i}, with a comma\n"),
            _ => format!("naïve {i}\n"),
        });
    }
    std::fs::write(input.join("lines.txt"), &text).unwrap();
    let mut expected = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            expected.push((Some("comment".to_owned()), line.to_owned()));
        } else {
            let keyed = line.starts_with('k');
            for field in line.split(',') {
                expected.push((keyed.then(|| field.to_owned()), field.to_owned()));
            }
        }
    }
    for (language, file, source) in [
        ("python", "app.py", SPLIT_FIELDS_PY),
        ("js", "app.js", SPLIT_FIELDS_JS),
    ] {
        let component = build_script(&dir.path().join(format!("split-fields-{language}")), file, source);
        let output = dir.path().join(format!("out-{language}"));
        let pipeline = write_pipeline(
            dir.path(),
            &format!("split-fields-{language}.toml"),
            &format!(
                r#"
[pipeline]
name = "split-fields"
batch-interval = "100ms"
partitions = 1
chunk-records = 64

[plugins]
fields = {component:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}

[[stage]]
name = "fields"
input = "lines"
op = "flat-map"
plugin = "fields"

[[sink]]
input = "fields"
type = "files"
path = {output:?}
format = "jsonl"
"#,
                input = input.display().to_string(),
                output = output.display().to_string(),
            ),
        );
        crate::run_file_ok(&pipeline);
        let records: Vec<(Option<String>, String)> = sink_lines(&output)
            .into_iter()
            .map(|(_, line)| {
                let record: serde_json::Value = serde_json::from_str(&line).unwrap();
                (
                    record["key"].as_str().map(str::to_owned),
                    record["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(records.len(), expected.len(), "{language}");
        assert!(
            records == expected,
            "{language}: the records differ from the lines' fields"
        );
    }
}

/// A batch flat-map that returns 100,001 empty records a call, as one split
/// string of spaces, whatever its input.
const FLOOD_SPLIT_JS: &str = r#"import * as weir from "weir";
weir.batch("flat-map", (batch, out) => out.emitSplit(" ".repeat(100000), " "), { name: "flood-split" });
"#;

#[test]
fn split_records_over_the_output_limits_stop_the_stage_with_the_output_limit_error() {
    // A byte a record: the host counts the records before it lays them out
    // (the unit tests of `world::packing` check that it refuses them then),
    // and the refusal reaches the stage as the output-limit error, not as a
    // trap.
    let dir = scratch();
    let component = build_script(&dir.path().join("flood-split"), "app.js", FLOOD_SPLIT_JS);
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("lines.txt"), "one\ntwo\n").unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        "flood-split.toml",
        &format!(
            r#"
[pipeline]
name = "flood-split"
batch-interval = "100ms"
partitions = 1

[plugins]
flood = {component:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}

[[stage]]
name = "flood"
input = "lines"
op = "flat-map"
plugin = "flood"
limits = {{ output-records-ratio = 10 }}

[[sink]]
input = "flood"
type = "files"
path = {output:?}
"#,
            input = input.display().to_string(),
            output = dir.path().join("out").display().to_string(),
        ),
    );
    let run = weir().run(
        &["run", "--available-now", &pipeline.display().to_string()],
        Duration::from_secs(300),
    );
    let err = stderr(&run);
    assert!(!run.status.success(), "the run must fail: {err}");
    assert!(
        err.contains("output limit: the call returned 100001 records")
            && err.contains("raise `output-records-ratio`"),
        "{err}"
    );
    assert!(!err.contains("panicked") && !err.contains("trap"), "{err}");
}

#[test]
fn a_python_plugin_whose_heap_grows_from_call_to_call_is_replaced_before_it_reaches_its_memory_limit() {
    // componentize-py never frees the bytes an export returns: every call
    // of split-words leaves its output behind in the instance's heap (its
    // words with a space each, about the size of its input). Over 320,000
    // lines (about 14 MB) in 1,024-line chunks on one partition that is
    // more than the 10 MiB a 24 MiB limit leaves above the instance's start,
    // which used to end the run in a memory trap; the host replaces the
    // instance between calls once it has grown past half of that room, and
    // the count is exact.
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let text = weir_tests::sample_text(320_000, 17);
    std::fs::write(input.join("lines.txt"), &text).unwrap();
    let output = dir.path().join("out");
    let pipeline = write_pipeline(
        dir.path(),
        "grows.toml",
        &format!(
            r#"
[pipeline]
name = "grows"
batch-interval = "100ms"
partitions = 1
chunk-records = 1024

[plugins]
split-words = {split_words:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"
limits = {{ memory = "24MiB" }}

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
            split_words = plugin("python", "split-words").display().to_string(),
            input = input.display().to_string(),
            output = output.display().to_string(),
        ),
    );
    let log = crate::run_file_ok(&pipeline);
    let replaced = log
        .lines()
        .find_map(|line| {
            line.strip_prefix("  stage `words`: ")?
                .split_once(" plugin instances replaced")
                .map(|(count, _)| count.parse::<u64>().unwrap())
        })
        .unwrap_or_else(|| panic!("no instance was replaced:\n{log}"));
    assert!(replaced >= 1, "{log}");
    let counted = summed_counts(&tree(&output));
    let mut expected: HashMap<String, u64> = HashMap::new();
    for word in text.split_ascii_whitespace() {
        *expected.entry(word.to_owned()).or_default() += 1;
    }
    assert_eq!(counted, expected);
}
