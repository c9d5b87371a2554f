//! Keyed state and the stateful example plugins under the deterministic
//! clock, compared with references written here: update-state-by-key with
//! and without spilling to disk, map-with-state timeouts (sessions), a
//! windowed top-k, a JSON enrichment with transform-with, and the errors a
//! stateful stage gives for a wrong plugin.

use std::collections::BTreeMap;
use std::path::Path;

use weir_tests::{plugins, scratch, sink_lines, stderr, write_pipeline};

use super::{LIMIT, run_ok, weir};

/// Writes batch `k`'s lines to `dir/bNNN.txt`.
fn batch_files(dir: &Path, batches: &[Vec<String>]) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, lines) in batches.iter().enumerate() {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        std::fs::write(dir.join(format!("b{k:03}.txt")), text).unwrap();
    }
}

/// A deterministic clock pipeline header reading `input` one file per batch.
fn header(name: &str, input: &Path, plugins_toml: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "1s"
partitions = 2
clock = "deterministic"

[plugins]
{plugins_toml}

[[source]]
name = "raw"
type = "files"
path = {input:?}
max-files-per-batch = 1
"#,
        input = input.display().to_string()
    )
}

/// `key<TAB>value` lines per batch, sorted.
fn lines_by_batch(dir: &Path) -> BTreeMap<u64, Vec<(String, String)>> {
    let mut out: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for (batch, line) in sink_lines(dir) {
        let (key, value) = line.split_once('\t').expect("key<TAB>value");
        out.entry(batch)
            .or_default()
            .push((key.to_owned(), value.to_owned()));
    }
    for lines in out.values_mut() {
        lines.sort();
    }
    out
}

/// Batches of `{"k": key, "v": value}` lines over `keys` distinct keys.
fn keyed_numbers(batches: usize, per_batch: usize, keys: u64) -> Vec<Vec<(String, i64)>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..batches)
        .map(|_| {
            (0..per_batch)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = format!("key-{}", (state >> 33) % keys);
                    (key, ((state >> 20) % 100) as i64 - 30)
                })
                .collect()
        })
        .collect()
}

#[test]
fn running_totals_match_a_reference_in_memory_and_spilled_to_disk() {
    let dir = scratch();
    let input = dir.path().join("in");
    let batches = keyed_numbers(8, 900, 1500);
    let lines: Vec<Vec<String>> = batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|(k, v)| format!("{{\"k\":\"{k}\",\"v\":{v}}}"))
                .collect()
        })
        .collect();
    batch_files(&input, &lines);

    // Reference: after each batch, the new total of every key it touched.
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut expected: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for (k, batch) in batches.iter().enumerate() {
        let mut touched = BTreeMap::new();
        for (key, value) in batch {
            *totals.entry(key.clone()).or_default() += value;
            touched.insert(key.clone(), ());
        }
        let mut out: Vec<(String, String)> = touched
            .keys()
            .map(|key| (key.clone(), totals[key].to_string()))
            .collect();
        out.sort();
        expected.insert(k as u64, out);
    }

    for (name, memory) in [("memory", "64MiB"), ("spilled", "8KiB")] {
        let out = dir.path().join(name);
        let pipeline = format!(
            r#"{header}
[[stage]]
name = "numbers"
input = "raw"
op = "map"
plugin = "key-by"
config = {{ field = "k", value-field = "v" }}

[[stage]]
name = "totals"
input = "numbers"
op = "update-state-by-key"
plugin = "running-total"
state-memory = "{memory}"
partitions = 3

[[sink]]
input = "totals"
type = "files"
path = {out:?}
"#,
            header = header(
                "totals",
                &input,
                &format!(
                    "key-by = {:?}\nrunning-total = {:?}",
                    plugins::JSON_KEY_BY,
                    plugins::RUNNING_TOTAL
                )
            ),
            out = out.display().to_string(),
        );
        let log = run_ok(dir.path(), &format!("{name}.toml"), &pipeline);
        assert_eq!(lines_by_batch(&out), expected, "{name}");
        let keys = totals.len();
        assert!(log.contains(&format!("state: {keys} keys")), "{name}: {log}");
        let on_disk: u64 = log
            .split("keys (")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no state figures in {log}"));
        if name == "spilled" {
            assert!(on_disk > 0, "a tiny state budget spills: {log}");
        } else {
            assert_eq!(on_disk, 0, "{log}");
        }
    }
}

#[test]
fn sessions_end_when_their_key_times_out() {
    let dir = scratch();
    let input = dir.path().join("in");
    // Users active in some batches; a timeout of 2 s (two batches).
    let activity: Vec<Vec<&str>> = vec![
        vec!["ann", "bob", "ann"],
        vec!["ann"],
        vec!["cid"],
        vec![],
        vec!["bob", "cid"],
        vec!["ann"],
        vec![],
        vec![],
        vec!["dan"],
    ];
    let lines: Vec<Vec<String>> = activity
        .iter()
        .map(|users| users.iter().map(|u| (*u).to_owned()).collect())
        .collect();
    batch_files(&input, &lines);
    let out = dir.path().join("out");
    let pipeline = format!(
        r#"{header}
[[stage]]
name = "users"
input = "raw"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "sessions"
input = "users"
op = "map-with-state"
plugin = "sessionizer"
timeout = "2s"

[[sink]]
input = "sessions"
type = "files"
path = {out:?}
"#,
        header = header(
            "sessions",
            &input,
            &format!(
                "split-words = {:?}\nsessionizer = {:?}",
                plugins::SPLIT_WORDS,
                plugins::SESSIONIZER
            )
        ),
        out = out.display().to_string(),
    );
    let log = run_ok(dir.path(), "sessions.toml", &pipeline);

    // Reference: batch k is at (k + 1) s; records carry their batch's time. A
    // key times out at the first batch without it whose time is at least
    // `timeout` after the last batch that had it.
    let timeout = 2_000;
    let mut open: BTreeMap<&str, (i64, i64, u64)> = BTreeMap::new();
    let mut expected: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for (k, users) in activity.iter().enumerate() {
        let time = (k as i64 + 1) * 1_000;
        let ended: Vec<&str> = open
            .iter()
            .filter(|(user, (_, end, _))| !users.contains(user) && time - end >= timeout)
            .map(|(user, _)| *user)
            .collect();
        for user in ended {
            let (start, end, events) = open.remove(user).unwrap();
            expected.entry(k as u64).or_default().push((
                user.to_owned(),
                format!("{{\"start\":{start},\"end\":{end},\"events\":{events}}}"),
            ));
        }
        for user in users {
            let session = open.entry(user).or_insert((time, time, 0));
            session.1 = time;
            session.2 += 1;
        }
    }
    for lines in expected.values_mut() {
        lines.sort();
    }
    let got: BTreeMap<u64, Vec<(String, String)>> = lines_by_batch(&out)
        .into_iter()
        .map(|(batch, lines)| {
            let normalized = lines
                .into_iter()
                .map(|(key, value)| {
                    let json: serde_json::Value = serde_json::from_str(&value).unwrap();
                    (
                        key,
                        format!(
                            "{{\"start\":{},\"end\":{},\"events\":{}}}",
                            json["start"], json["end"], json["events"]
                        ),
                    )
                })
                .collect();
            (batch, normalized)
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
    // Sessions still open at the end are state; ended ones were removed.
    assert!(log.contains(&format!("state: {} keys", open.len())), "{log}");
}

#[test]
fn a_windowed_top_k_ranks_each_window() {
    let dir = scratch();
    let input = dir.path().join("in");
    let words = ["fox", "owl", "elk", "bee", "ant"];
    let batches: Vec<Vec<String>> = (0..6)
        .map(|k: usize| {
            (0..12)
                .map(|i: usize| words[(i * i + k * 3 + i / 3) % words.len()].to_owned())
                .collect()
        })
        .collect();
    batch_files(&input, &batches);
    let out = dir.path().join("out");
    let pipeline = format!(
        r#"{header}
[[stage]]
name = "words"
input = "raw"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key-and-window"
reducer = "count"
length = "3s"
inverse = true
partitions = 1

[[stage]]
name = "top"
input = "counts"
op = "map-partitions"
plugin = "top-k"
config = {{ k = 2 }}

[[sink]]
input = "top"
type = "files"
path = {out:?}
"#,
        header = header(
            "top",
            &input,
            &format!(
                "split-words = {:?}\ntop-k = {:?}",
                plugins::SPLIT_WORDS,
                plugins::TOP_K
            )
        ),
        out = out.display().to_string(),
    );
    run_ok(dir.path(), "top.toml", &pipeline);
    let mut expected = BTreeMap::new();
    for k in 0..batches.len() {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for word in batches[k.saturating_sub(2)..=k].iter().flatten() {
            *counts.entry(word).or_default() += 1;
        }
        let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut top: Vec<(String, String)> = ranked
            .iter()
            .take(2)
            .map(|(w, c)| ((*w).to_owned(), c.to_string()))
            .collect();
        top.sort();
        expected.insert(k as u64, top);
    }
    assert_eq!(lines_by_batch(&out), expected);
}

#[test]
fn transform_with_enriches_events_with_reference_rows() {
    let dir = scratch();
    let (events, users) = (dir.path().join("events"), dir.path().join("users"));
    batch_files(
        &events,
        &[vec![
            r#"{"user":"u1","item":"tea"}"#.to_owned(),
            r#"{"user":"u2","item":"map"}"#.to_owned(),
            r#"{"user":"u1","item":"pen","city":"Oslo"}"#.to_owned(),
        ]],
    );
    batch_files(
        &users,
        &[vec![
            r#"{"user":"u1","city":"Bergen","tier":"gold"}"#.to_owned(),
            r#"{"user":"u3","city":"Rome"}"#.to_owned(),
        ]],
    );
    let out = dir.path().join("out");
    let pipeline = format!(
        r#"
[pipeline]
name = "enrich"
partitions = 2
clock = "deterministic"

[plugins]
key-by = {key_by:?}
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
name = "enriched"
input = ["events", "users"]
op = "transform-with"
plugin = "enrich"
partitions = 3

[[sink]]
input = "enriched"
type = "files"
path = {out:?}
"#,
        key_by = plugins::JSON_KEY_BY,
        enrich = plugins::ENRICH,
        events = events.display().to_string(),
        users = users.display().to_string(),
        out = out.display().to_string(),
    );
    run_ok(dir.path(), "enrich.toml", &pipeline);
    let mut got: Vec<(String, serde_json::Value)> = sink_lines(&out)
        .into_iter()
        .map(|(_, line)| {
            let (key, value) = line.split_once('\t').unwrap();
            (key.to_owned(), serde_json::from_str(value).unwrap())
        })
        .collect();
    got.sort_by_key(|(key, value)| (key.clone(), value.to_string()));
    let mut expected = vec![
        (
            "u1".to_owned(),
            serde_json::json!({"user": "u1", "item": "tea", "city": "Bergen", "tier": "gold"}),
        ),
        // The event's own field wins over the reference row's.
        (
            "u1".to_owned(),
            serde_json::json!({"user": "u1", "item": "pen", "city": "Oslo", "tier": "gold"}),
        ),
        ("u2".to_owned(), serde_json::json!({"user": "u2", "item": "map"})),
    ];
    expected.sort_by_key(|(key, value)| (key.clone(), value.to_string()));
    assert_eq!(got, expected);
}

#[test]
fn a_stateful_stage_with_the_wrong_plugin_or_inputs_is_refused() {
    let dir = scratch();
    let input = dir.path().join("in");
    batch_files(&input, &[vec!["a".to_owned()]]);
    let cases = [
        (
            "[[stage]]\nname = \"s\"\ninput = \"raw\"\nop = \"update-state-by-key\"\nplugin = \"p\"\n",
            plugins::SUM,
            "is a plugin of kind `reducer`, but op `update-state-by-key` needs one of kind `update-state`",
        ),
        (
            "[[stage]]\nname = \"s\"\ninput = \"raw\"\nop = \"map-with-state\"\nplugin = \"p\"\n",
            plugins::RUNNING_TOTAL,
            "is a plugin of kind `update-state`, but op `map-with-state` needs one of kind `map-with-state`",
        ),
        (
            "[[stage]]\nname = \"s\"\ninput = \"raw\"\nop = \"join\"\n",
            plugins::SUM,
            "op `join` takes exactly two input streams",
        ),
        (
            "[[stage]]\nname = \"s\"\ninput = \"raw\"\nop = \"reduce-by-key-and-window\"\nreducer = \"max\"\nlength = \"2s\"\ninverse = true\n",
            plugins::SUM,
            "min and max have no inverse",
        ),
        (
            "[[stage]]\nname = \"s\"\ninput = \"raw\"\nop = \"window\"\nlength = \"2500ms\"\n",
            plugins::SUM,
            "is not a multiple of the batch interval",
        ),
    ];
    for (stage, plugin, message) in cases {
        let pipeline = format!(
            "{header}\n{stage}\n[[sink]]\ninput = \"s\"\ntype = \"console\"\n",
            header = header("wrong", &input, &format!("p = {plugin:?}")),
        );
        let file = write_pipeline(dir.path(), "wrong.toml", &pipeline);
        let output = weir().run(&["run", file.to_str().unwrap(), "--available-now"], LIMIT);
        assert_eq!(output.status.code(), Some(2), "{stage}: {}", stderr(&output));
        assert!(stderr(&output).contains(message), "{stage}: {}", stderr(&output));
        assert!(
            stderr(&output).contains("wrong.toml:"),
            "the error names the file: {}",
            stderr(&output)
        );
    }
}
