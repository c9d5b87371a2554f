//! Pipelines as graphs, and the example plugins end to end: several sources,
//! union, chains of plugins, several sinks, plugin reducers, JSON.

use std::collections::BTreeMap;

use weir_tests::{
    plugins, sample_text, scratch, sink_lines, stderr, summed_counts, word_counts, write_pipeline,
};

use super::{LIMIT, run_ok, weir};

fn files_source(name: &str, dir: &std::path::Path) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\ntype = \"files\"\npath = {:?}\n",
        dir.display().to_string()
    )
}

#[test]
fn two_sources_union_chain_of_plugins_and_two_sinks() {
    let dir = scratch();
    let (left, right) = (dir.path().join("left"), dir.path().join("right"));
    std::fs::create_dir(&left).unwrap();
    std::fs::create_dir(&right).unwrap();
    let (a, b) = (sample_text(1_500, 31), sample_text(1_500, 32));
    std::fs::write(left.join("a.txt"), &a).unwrap();
    std::fs::write(right.join("b.txt"), &b).unwrap();
    let (counts_out, words_out) = (dir.path().join("counts"), dir.path().join("words"));
    let pipeline = format!(
        r#"
[pipeline]
name = "graph"
batch-interval = "50ms"
partitions = 3

[plugins]
split-words = {split:?}
lowercase = {lower:?}
drop-stopwords = {stop:?}

{left}
{right}
[[stage]]
name = "lines"
input = ["left", "right"]
op = "union"

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "lower"
input = "words"
op = "map"
plugin = "lowercase"

[[stage]]
name = "content"
input = "lower"
op = "filter"
plugin = "drop-stopwords"
config = {{ stopwords = ["the", "a"] }}

[[stage]]
name = "counts"
input = "content"
op = "reduce-by-key"
reducer = "count"
partitions = 2

[[sink]]
input = "counts"
type = "files"
path = {counts_out:?}

[[sink]]
input = "content"
type = "files"
path = {words_out:?}
format = "jsonl"
"#,
        split = plugins::SPLIT_WORDS,
        lower = plugins::LOWERCASE,
        stop = plugins::DROP_STOPWORDS,
        left = files_source("left", &left),
        right = files_source("right", &right),
        counts_out = counts_out.display().to_string(),
        words_out = words_out.display().to_string(),
    );
    run_ok(dir.path(), "p.toml", &pipeline);

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (word, count) in word_counts(&format!("{a}{b}")) {
        let lower = word.to_lowercase();
        if lower != "the" && lower != "a" {
            *expected.entry(lower).or_insert(0) += count;
        }
    }
    assert_eq!(summed_counts(&counts_out), expected);

    // The jsonl sink: one object per word, key and value strings.
    let lines = sink_lines(&words_out);
    assert_eq!(lines.len() as u64, expected.values().sum::<u64>());
    for (_, line) in lines.iter().take(50) {
        let value: serde_json_lite::Object = serde_json_lite::parse(line);
        assert_eq!(value.key, value.value, "{line}");
        assert!(expected.contains_key(&value.value), "{line}");
    }
}

/// Enough JSON reading for the jsonl sink's simple objects, so this test does
/// not reuse the engine's serializer to check its output.
mod serde_json_lite {
    pub struct Object {
        pub key: String,
        pub value: String,
    }

    fn string_field(line: &str, name: &str) -> String {
        let start = line
            .find(&format!("\"{name}\":\""))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            + name.len()
            + 4;
        let end = start + line[start..].find('"').unwrap();
        line[start..end].to_owned()
    }

    pub fn parse(line: &str) -> Object {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert!(line.contains("\"timestamp\":"), "{line}");
        Object {
            key: string_field(line, "key"),
            value: string_field(line, "value"),
        }
    }
}

#[test]
fn plugin_reducer_sums_json_values_keyed_by_a_field() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut text = String::new();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..2_000i64 {
        let user = format!("user-{}", i % 17);
        let amount = (i * 7919) % 1000 - 300;
        text.push_str(&format!("{{\"user\": \"{user}\", \"amount\": {amount}}}\n"));
        *expected.entry(user).or_insert(0) += amount;
    }
    std::fs::write(input.join("events.jsonl"), &text).unwrap();
    let out = dir.path().join("out");
    // json-key-by keys each event by `user` and keeps `amount` as the value;
    // the sum plugin (not the built-in) adds them up.
    let pipeline = format!(
        r#"
[pipeline]
name = "spend"
partitions = 2

[plugins]
key-by = {key_by:?}
decimal-sum = {sum:?}

[[source]]
name = "events"
type = "files"
path = {input:?}

[[stage]]
name = "by-user"
input = "events"
op = "map"
plugin = "key-by"
config = {{ field = "user", value-field = "amount" }}

[[stage]]
name = "totals"
input = "by-user"
op = "reduce-by-key"
reducer = "decimal-sum"

[[sink]]
input = "totals"
type = "files"
path = {out:?}
"#,
        key_by = plugins::JSON_KEY_BY,
        sum = plugins::SUM,
        input = input.display().to_string(),
        out = out.display().to_string(),
    );
    run_ok(dir.path(), "p.toml", &pipeline);
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for (_, line) in sink_lines(&out) {
        let (user, amount) = line.split_once('\t').unwrap();
        *totals.entry(user.to_owned()).or_insert(0) += amount.parse::<i64>().unwrap();
    }
    assert_eq!(totals, expected);
}

/// The flat-map and the combine run chunk by chunk in one task when the
/// words stream feeds only the count; a sink on the words stream, or a
/// retry/skip policy, keeps them apart. Every way gives the same counts,
/// and the words sink gets every word.
#[test]
fn chunk_by_chunk_and_stage_by_stage_execution_agree() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let text = sample_text(3_000, 11);
    std::fs::write(input.join("a.txt"), &text).unwrap();
    let expected = word_counts(&text);
    for (name, stage_extra, words_sink) in [
        ("fused", "", false),
        ("observed", "", true),
        ("guarded", "on-error = \"skip-batch\"\n", false),
    ] {
        let out = dir.path().join(format!("out-{name}"));
        let words_out = dir.path().join(format!("words-{name}"));
        let source = format!("type = \"files\"\npath = {:?}", input.display().to_string());
        let mut pipeline = super::wordcount_pipeline(&source, &out, 2)
            .replace("partitions = 2\n", "partitions = 2\nchunk-records = 37\n")
            .replace(
                "plugin = \"split-words\"\n",
                &format!("plugin = \"split-words\"\n{stage_extra}"),
            );
        if words_sink {
            pipeline.push_str(&format!(
                "\n[[sink]]\ninput = \"words\"\ntype = \"files\"\npath = {:?}\n",
                words_out.display().to_string()
            ));
        }
        let file = write_pipeline(dir.path(), &format!("{name}.toml"), &pipeline);
        let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        assert_eq!(summed_counts(&out), expected, "{name}");
        if words_sink {
            let mut words: BTreeMap<String, u64> = BTreeMap::new();
            for (_, line) in sink_lines(&words_out) {
                let (_, word) = line.split_once('\t').expect("key<TAB>value");
                *words.entry(word.to_owned()).or_insert(0) += 1;
            }
            assert_eq!(words, expected, "{name}: the words stream");
        }
    }
}
