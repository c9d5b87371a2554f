//! Bad input gets a clear error (exit status 2 for bad files, 1 for
//! failures at run time) and never a panic.

use std::path::Path;

use weir_tests::{plugins, sample_text, scratch, stderr, write_pipeline};

use super::{LIMIT, run_ok, weir, wordcount_pipeline};

/// Runs `weir check` and `weir run` on `pipeline` and returns run's stderr
/// after checking both exit with status 2.
fn rejected(pipeline: &str) -> String {
    let dir = scratch();
    let file = write_pipeline(dir.path(), "bad.toml", pipeline);
    let check = weir().run(&["check", file.to_str().unwrap()], LIMIT);
    assert_eq!(check.status.code(), Some(2), "check: {}", stderr(&check));
    let run = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    assert_eq!(run.status.code(), Some(2), "run: {}", stderr(&run));
    let message = stderr(&run);
    assert!(!message.contains("panicked"), "{message}");
    message
}

fn generator_pipeline(out: &Path) -> String {
    wordcount_pipeline("type = \"generator\"\nlines = 10", out, 2)
}

#[test]
fn a_syntax_error_names_the_line() {
    let dir = scratch();
    let text = generator_pipeline(&dir.path().join("out")).replace("partitions = 2", "partitions = = 2");
    let message = rejected(&text);
    assert!(
        message.contains("bad.toml") && message.contains("line 5"),
        "{message}"
    );
}

#[test]
fn an_unknown_key_is_rejected_with_its_line() {
    let dir = scratch();
    let text = generator_pipeline(&dir.path().join("out"))
        .replace("op = \"flat-map\"", "op = \"flat-map\"\nparallelism = 4");
    let message = rejected(&text);
    assert!(
        message.contains("parallelism") && message.contains("line 19"),
        "{message}"
    );
}

#[test]
fn an_unknown_stream_names_the_stage_and_line() {
    let dir = scratch();
    let text = generator_pipeline(&dir.path().join("out")).replace("input = \"words\"", "input = \"wrods\"");
    let message = rejected(&text);
    assert!(
        message.contains("bad.toml:23") && message.contains("unknown stream `wrods`"),
        "{message}"
    );
}

#[test]
fn a_cycle_is_rejected() {
    let dir = scratch();
    let text = generator_pipeline(&dir.path().join("out")).replace("input = \"lines\"", "input = \"counts\"");
    let message = rejected(&text);
    assert!(
        message.contains("cycle") && message.contains("words → counts → words")
            || message.contains("counts → words → counts"),
        "{message}"
    );
}

#[test]
fn a_missing_plugin_file_is_named() {
    let dir = scratch();
    let text = generator_pipeline(&dir.path().join("out"))
        .replace(plugins::SPLIT_WORDS, "/nonexistent/split_words.wasm");
    let message = rejected(&text);
    assert!(
        message.contains("/nonexistent/split_words.wasm") && message.contains("split-words"),
        "{message}"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_rejected() {
    let dir = scratch();
    let fake = dir.path().join("fake.wasm");
    std::fs::write(&fake, b"this is not wasm").unwrap();
    let text =
        generator_pipeline(&dir.path().join("out")).replace(plugins::SPLIT_WORDS, fake.to_str().unwrap());
    let message = rejected(&text);
    assert!(message.contains("not a valid WebAssembly component"), "{message}");

    // A core module (wasm magic, version 1) is not a component either.
    std::fs::write(&fake, b"\0asm\x01\0\0\0").unwrap();
    let message = rejected(&text);
    assert!(message.contains("core Wasm module, not a component"), "{message}");
}

#[test]
fn a_plugin_built_against_another_contract_says_which() {
    // split-words as if built against a later contract: every
    // `weir:plugin/...@0.2.0` name it imports or exports says 0.9.0 instead.
    let mut bytes = std::fs::read(plugins::SPLIT_WORDS).unwrap();
    let (prefix, from, to) = (b"weir:plugin/", b"@0.2.0", b"@0.9.0");
    let mut renamed = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(prefix.len()).position(|w| w == prefix) {
        let start = at + found + prefix.len();
        let end = (start + 40).min(bytes.len());
        if let Some(version) = bytes[start..end].windows(from.len()).position(|w| w == from) {
            bytes[start + version..start + version + to.len()].copy_from_slice(to);
            renamed += 1;
        }
        at = start;
    }
    assert!(renamed >= 2, "found {renamed} weir:plugin names");
    let dir = scratch();
    let later = dir.path().join("split_words_later.wasm");
    std::fs::write(&later, &bytes).unwrap();
    let text =
        generator_pipeline(&dir.path().join("out")).replace(plugins::SPLIT_WORDS, later.to_str().unwrap());
    let message = rejected(&text);
    assert!(
        message.contains("built against version 0.9.0 of the weir:plugin contract")
            && message.contains("built against 0.2.0 or 0.1.0"),
        "{message}"
    );
}

#[test]
fn a_plugin_of_the_wrong_kind_is_rejected() {
    let dir = scratch();
    let text = generator_pipeline(&dir.path().join("out")).replace("op = \"flat-map\"", "op = \"map\"");
    let message = rejected(&text);
    assert!(
        message.contains("flat-map plugin") && message.contains("op is `map`"),
        "{message}"
    );

    let text = generator_pipeline(&dir.path().join("out")).replace(plugins::SPLIT_WORDS, plugins::SUM);
    let message = rejected(&text);
    assert!(message.contains("reducer"), "{message}");
}

#[test]
fn a_plugin_that_rejects_its_config_stops_before_running() {
    let text = format!(
        r#"
[pipeline]
name = "json"
[plugins]
key-by = {plugin:?}
[[source]]
name = "lines"
type = "generator"
lines = 10
[[stage]]
name = "keyed"
input = "lines"
op = "map"
plugin = "key-by"
[[sink]]
input = "keyed"
type = "console"
"#,
        plugin = plugins::JSON_KEY_BY
    );
    let message = rejected(&text);
    assert!(
        message.contains("keyed") && message.contains("field"),
        "{message}"
    );
}

/// Runs `pipeline` (written to `name` in `dir`), which must fail at run
/// time (exit 1) with a message containing every `expected` piece; returns
/// the message.
fn fails_naming(dir: &Path, name: &str, pipeline: &str, expected: &[&str]) -> String {
    let file = write_pipeline(dir, name, pipeline);
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    for expected in expected {
        assert!(message.contains(expected), "missing {expected:?} in: {message}");
    }
    message
}

fn failing_pipeline(plugin: &str, input: &Path, out: &Path) -> String {
    format!(
        r#"
[pipeline]
name = "failing"
partitions = 1
[plugins]
check = {plugin:?}
[[source]]
name = "lines"
type = "files"
path = {input:?}
[[stage]]
name = "checked"
input = "lines"
op = "map"
plugin = "check"
[[sink]]
input = "checked"
type = "files"
path = {out:?}
"#,
        input = input.display().to_string(),
        out = out.display().to_string()
    )
}

#[test]
fn a_plugin_error_stops_the_pipeline_naming_stage_partition_batch_and_record() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.txt"), "good\nfine\nfail\nlater\n").unwrap();
    let message = fails_naming(
        dir.path(),
        "p.toml",
        &failing_pipeline(plugins::FAIL_ON, &input, &dir.path().join("out")),
        &[
            "pipeline `failing`",
            "stage `checked`",
            "partition 0",
            "batch 0",
            "record 2",
            "fail-on: refusing fail",
        ],
    );
    assert!(!message.contains("panicked"), "{message}");
}

/// A map or flat-map, then a reduce-by-key over its output, with two-line chunks: the
/// stages run chunk by chunk in one task (the map's output stream feeds
/// only the reduce), so an error must still name its own stage and the
/// record's index in the partition, not in its chunk.
fn chained_pipeline(input: &Path, out: &Path, (op, plugin): (&str, &str), reducer: &str) -> String {
    format!(
        r#"
[pipeline]
name = "chained"
partitions = 1
chunk-records = 2
[plugins]
mapper = {plugin:?}
[[source]]
name = "lines"
type = "files"
path = {input:?}
[[stage]]
name = "mapped"
input = "lines"
op = "{op}"
plugin = "mapper"
[[stage]]
name = "totals"
input = "mapped"
op = "reduce-by-key"
reducer = "{reducer}"
[[sink]]
input = "totals"
type = "files"
path = {out:?}
"#,
        input = input.display().to_string(),
        out = out.display().to_string()
    )
}

#[test]
fn errors_in_chained_stages_name_their_stage_and_partition_wide_record() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    // The third chunk's second line fails in the first stage.
    std::fs::write(input.join("a.txt"), "a\nb\nc\nd\ne\nfail\ng\n").unwrap();
    fails_naming(
        dir.path(),
        "map.toml",
        &chained_pipeline(
            &input,
            &dir.path().join("out-map"),
            ("map", plugins::FAIL_ON),
            "count",
        ),
        &[
            "stage `mapped`",
            "partition 0",
            "record 5",
            "fail-on: refusing fail",
        ],
    );

    // Words 0-3 are numbers, word 4 (in the third chunk) is not: the
    // reduce's `sum` fails on it, in the second stage.
    std::fs::write(input.join("a.txt"), "1 2\n3\n4\nx 5\n6\n").unwrap();
    fails_naming(
        dir.path(),
        "sum.toml",
        &chained_pipeline(
            &input,
            &dir.path().join("out-sum"),
            ("flat-map", plugins::SPLIT_WORDS),
            "sum",
        ),
        &["stage `totals`", "partition 0", "record 4", "\"x\""],
    );
}

#[test]
fn a_plugin_panic_is_reported_with_its_message() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.txt"), "one\npanic\nthree\n").unwrap();
    fails_naming(
        dir.path(),
        "p.toml",
        &failing_pipeline(plugins::PANIC_ON, &input, &dir.path().join("out")),
        &[
            "stage `checked`",
            "partition 0",
            "batch 0",
            "panic",
            "panic-on: found panic",
        ],
    );
}

#[test]
fn an_unreadable_file_is_reported_and_the_others_go_on() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let text = sample_text(400, 5);
    std::fs::write(input.join("a.txt"), &text).unwrap();
    std::os::unix::fs::symlink(dir.path().join("missing-target"), input.join("b.txt")).unwrap();
    std::fs::write(input.join("c.txt"), &text).unwrap();
    let out = dir.path().join("out");
    let source = format!("type = \"files\"\npath = {:?}", input.display().to_string());
    let file = write_pipeline(dir.path(), "p.toml", &wordcount_pipeline(&source, &out, 2));
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    assert!(
        message.contains("b.txt") && message.contains("cannot read file"),
        "{message}"
    );
    let expected = weir_tests::word_counts(&format!("{text}{text}"));
    assert_eq!(weir_tests::summed_counts(&out), expected);
}

#[test]
fn non_utf8_data_passes_through_as_bytes() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let data: &[u8] = b"caf\xe9 \xff\xfe ok\nplain \xc3\x28\n";
    std::fs::write(input.join("a.txt"), data).unwrap();
    let out = dir.path().join("out");
    let source = format!("type = \"files\"\npath = {:?}", input.display().to_string());
    let pipeline = wordcount_pipeline(&source, &out, 1).replace(
        "op = \"reduce-by-key\"\nreducer = \"count\"",
        "op = \"repartition\"",
    );
    run_ok(dir.path(), "p.toml", &pipeline);
    let mut written = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        for part in std::fs::read_dir(entry.unwrap().path()).unwrap() {
            written.extend(std::fs::read(part.unwrap().path()).unwrap());
        }
    }
    let mut lines: Vec<&[u8]> = written.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    lines.sort();
    let mut expected: Vec<Vec<u8>> = data
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| [w, b"\t", w].concat())
        .collect();
    expected.sort();
    assert_eq!(lines, expected.iter().map(Vec::as_slice).collect::<Vec<_>>());
}
