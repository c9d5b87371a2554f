//! Windows under the deterministic clock, each compared with a reference
//! implementation written here: batch `k` is input file `k`, so every
//! window's contents are known without the engine.

use std::collections::BTreeMap;
use std::path::Path;

use weir_tests::{plugins, scratch, sink_lines};

use super::run_ok;

/// Files `f000.txt`, `f001.txt`, … in `dir`, one integer per line.
fn number_files(dir: &Path, files: usize) -> Vec<Vec<i64>> {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..files)
        .map(|file| {
            // File 4 is empty: an empty batch still moves windows on.
            let lines = if file == 4 { 0 } else { 3 + file % 5 };
            let numbers: Vec<i64> = (0..lines)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 9) as i64
                })
                .collect();
            let text: String = numbers.iter().map(|n| format!("{n}\n")).collect();
            std::fs::write(dir.join(format!("f{file:03}.txt")), text).unwrap();
            numbers
        })
        .collect()
}

/// The batches whose records a window ending at batch `k` covers.
fn window_batches(k: usize, length: usize) -> std::ops::RangeInclusive<usize> {
    (k + 1).saturating_sub(length)..=k
}

/// Per batch id, the key → value pairs a stage emitted.
type Emitted = BTreeMap<u64, BTreeMap<String, String>>;

/// Per batch id, the (window start, key) → count pairs of event-time windows.
type WindowCounts = BTreeMap<u64, BTreeMap<(i64, String), u64>>;

/// `key<TAB>value` lines of a text files sink, per batch id.
fn keyed_by_batch(dir: &Path) -> Emitted {
    let mut out: Emitted = BTreeMap::new();
    for (batch, line) in sink_lines(dir) {
        let (key, value) = line.split_once('\t').unwrap_or(("", line.as_str()));
        let previous = out
            .entry(batch)
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        assert!(
            previous.is_none(),
            "key {key:?} twice in batch {batch} of {}",
            dir.display()
        );
    }
    out
}

#[test]
fn every_processing_time_window_operator_matches_a_reference() {
    let dir = scratch();
    let input = dir.path().join("in");
    let files = number_files(&input, 12);
    let out = |name: &str| dir.path().join("out").join(name);
    let stage = |name: &str, op: &str, extra: &str| {
        format!("[[stage]]\nname = \"{name}\"\ninput = \"numbers\"\nop = \"{op}\"\n{extra}\n")
    };
    let sink = |name: &str| {
        format!(
            "[[sink]]\ninput = \"{name}\"\ntype = \"files\"\npath = {:?}\n",
            out(name).display().to_string()
        )
    };
    let outputs = [
        ("raw", "window", "length = \"3s\"\nslide = \"2s\""),
        ("count", "count-by-window", "length = \"3s\""),
        ("count-inv", "count-by-window", "length = \"3s\"\ninverse = true"),
        (
            "sum",
            "reduce-by-window",
            "reducer = \"sum\"\nlength = \"4s\"\nslide = \"2s\"",
        ),
        (
            "sum-inv",
            "reduce-by-window",
            "reducer = \"sum\"\nlength = \"4s\"\nslide = \"2s\"\ninverse = true",
        ),
        ("max", "reduce-by-window", "reducer = \"max\"\nlength = \"2s\""),
        (
            "by-value",
            "count-by-value-and-window",
            "length = \"3s\"\nslide = \"3s\"",
        ),
        (
            "by-value-inv",
            "count-by-value-and-window",
            "length = \"3s\"\nslide = \"3s\"\ninverse = true",
        ),
        (
            "by-key",
            "reduce-by-key-and-window",
            "reducer = \"count\"\nlength = \"5s\"\nslide = \"1s\"",
        ),
        (
            "by-key-inv",
            "reduce-by-key-and-window",
            "reducer = \"count\"\nlength = \"5s\"\nslide = \"1s\"\ninverse = true\npartitions = 3",
        ),
        (
            "by-key-plugin",
            "reduce-by-key-and-window",
            "reducer = \"sum-plugin\"\nlength = \"5s\"\nslide = \"1s\"\ninverse = \"subtract\"\nneutral = \"0\"",
        ),
        // A state-memory far below the window's partials: they spill to disk.
        (
            "by-key-spill",
            "reduce-by-key-and-window",
            "reducer = \"count\"\nlength = \"5s\"\nslide = \"1s\"\nstate-memory = \"300B\"",
        ),
        (
            "by-key-inv-spill",
            "reduce-by-key-and-window",
            "reducer = \"count\"\nlength = \"5s\"\nslide = \"1s\"\ninverse = true\npartitions = 3\nstate-memory = \"300B\"",
        ),
    ];
    let mut pipeline = format!(
        r#"
[pipeline]
name = "windows"
batch-interval = "1s"
partitions = 2
clock = "deterministic"

[plugins]
split-words = {split:?}
sum-plugin = {sum:?}
subtract = {subtract:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "numbers"
input = "lines"
op = "flat-map"
plugin = "split-words"
"#,
        split = plugins::SPLIT_WORDS,
        sum = plugins::SUM,
        subtract = plugins::SUBTRACT,
        input = input.display().to_string(),
    );
    for (name, op, extra) in outputs {
        pipeline.push_str(&stage(name, op, extra));
        pipeline.push_str(&sink(name));
    }
    let log = run_ok(dir.path(), "windows.toml", &pipeline);
    assert!(log.contains("12 batches"), "{log}");
    // The spilling stages end with partials on disk; the others with none.
    let on_disk = |stage: &str| -> u64 {
        let line = log
            .lines()
            .find(|line| line.contains(&format!("stage `{stage}`: ")) && line.ends_with(" on disk"))
            .unwrap_or_else(|| panic!("no state line for `{stage}`: {log}"));
        line.trim_end_matches(" on disk")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(on_disk("by-key-spill") > 0, "{log}");
    assert!(on_disk("by-key-inv-spill") > 0, "{log}");
    assert_eq!(on_disk("by-key"), 0, "{log}");

    let batches = files.len();
    // Reference: what each window holds, from the input files alone.
    let reference = |length: usize, slide: usize, reduce: &dyn Fn(&[i64]) -> BTreeMap<String, String>| {
        let mut expected = BTreeMap::new();
        for k in (0..batches).filter(|k| (k + 1) % slide == 0) {
            let values: Vec<i64> = window_batches(k, length).flat_map(|b| files[b].clone()).collect();
            let reduced = reduce(&values);
            if !reduced.is_empty() {
                expected.insert(k as u64, reduced);
            }
        }
        expected
    };
    let one = |value: String| BTreeMap::from([(String::new(), value)]);
    let count = |values: &[i64]| {
        if values.is_empty() {
            BTreeMap::new()
        } else {
            one(values.len().to_string())
        }
    };
    let sum = |values: &[i64]| {
        if values.is_empty() {
            BTreeMap::new()
        } else {
            one(values.iter().sum::<i64>().to_string())
        }
    };
    let max = |values: &[i64]| {
        values
            .iter()
            .max()
            .map(|m| one(m.to_string()))
            .unwrap_or_default()
    };
    let by_value = |values: &[i64]| {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for v in values {
            *counts.entry(v.to_string()).or_default() += 1;
        }
        counts.into_iter().map(|(k, v)| (k, v.to_string())).collect()
    };
    // The plugin's window sums the numbers per key and drops keys whose sum is 0.
    let summed_by_key = |values: &[i64]| {
        let mut sums: BTreeMap<String, i64> = BTreeMap::new();
        for v in values {
            *sums.entry(v.to_string()).or_default() += v;
        }
        sums.into_iter()
            .filter(|(_, sum)| *sum != 0)
            .map(|(k, v)| (k, v.to_string()))
            .collect()
    };
    let checks: [(&str, Emitted); 12] = [
        ("count", reference(3, 1, &count)),
        ("count-inv", reference(3, 1, &count)),
        ("sum", reference(4, 2, &sum)),
        ("sum-inv", reference(4, 2, &sum)),
        ("max", reference(2, 1, &max)),
        ("by-value", reference(3, 3, &by_value)),
        ("by-value-inv", reference(3, 3, &by_value)),
        ("by-key", reference(5, 1, &by_value)),
        ("by-key-inv", reference(5, 1, &by_value)),
        ("by-key-plugin", reference(5, 1, &summed_by_key)),
        ("by-key-spill", reference(5, 1, &by_value)),
        ("by-key-inv-spill", reference(5, 1, &by_value)),
    ];
    for (name, expected) in checks {
        assert_eq!(keyed_by_batch(&out(name)), expected, "window stage `{name}`");
    }
    // Incremental (inverse) and recomputed windows agree exactly.
    for (recomputed, incremental) in [
        ("count", "count-inv"),
        ("sum", "sum-inv"),
        ("by-value", "by-value-inv"),
        ("by-key", "by-key-inv"),
    ] {
        assert_eq!(
            keyed_by_batch(&out(recomputed)),
            keyed_by_batch(&out(incremental))
        );
    }
    // The raw window: every record of the window, as a multiset.
    let mut raw: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (batch, line) in sink_lines(&out("raw")) {
        raw.entry(batch)
            .or_default()
            .push(line.split_once('\t').unwrap().1.to_owned());
    }
    for lines in raw.values_mut() {
        lines.sort();
    }
    let mut expected_raw: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for k in (0..batches).filter(|k| (k + 1) % 2 == 0) {
        let mut values: Vec<String> = window_batches(k, 3)
            .flat_map(|b| files[b].iter().map(|v| v.to_string()))
            .collect();
        values.sort();
        expected_raw.insert(k as u64, values);
    }
    assert_eq!(raw, expected_raw);
}

#[test]
fn window_records_are_tagged_with_their_window() {
    let dir = scratch();
    let input = dir.path().join("in");
    number_files(&input, 4);
    let out = dir.path().join("out");
    let pipeline = format!(
        r#"
[pipeline]
name = "tagged"
batch-interval = "500ms"
partitions = 1
clock = "deterministic"
start-time = 1000000

[[source]]
name = "lines"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "counts"
input = "lines"
op = "count-by-window"
length = "1s"
slide = "1s"

[[sink]]
input = "counts"
type = "files"
format = "jsonl"
path = {out:?}
"#,
        input = input.display().to_string(),
        out = out.display().to_string(),
    );
    run_ok(dir.path(), "tagged.toml", &pipeline);
    let lines = sink_lines(&out);
    let windows: Vec<(u64, i64, i64, i64)> = lines
        .iter()
        .map(|(batch, line)| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let window = &record["window"];
            (
                *batch,
                window["start"].as_i64().unwrap(),
                window["end"].as_i64().unwrap(),
                record["timestamp"].as_i64().unwrap(),
            )
        })
        .collect();
    // Batch k ends at start-time + (k + 1) * 500 ms; windows of 1 s end every 2 batches.
    assert_eq!(
        windows,
        vec![
            (1, 1_000_000, 1_001_000, 1_000_999),
            (3, 1_001_000, 1_002_000, 1_001_999)
        ]
    );
}

/// One event: key, event time in ms.
type Event = (&'static str, i64);

/// A reference of event-time tumbling/sliding counts with a watermark that
/// trails the largest timestamp of earlier batches, as the engine documents.
struct EventReference {
    emitted: WindowCounts,
    late: usize,
    open_keys: usize,
}

fn event_reference(
    batches: &[Vec<Event>],
    length: i64,
    slide: i64,
    lateness: i64,
    append: bool,
) -> EventReference {
    let mut watermark = i64::MIN;
    let mut max_seen = i64::MIN;
    let mut windows: BTreeMap<(i64, String), u64> = BTreeMap::new();
    let mut emitted: WindowCounts = BTreeMap::new();
    let mut late = 0;
    for (k, events) in batches.iter().enumerate() {
        let mut changed = BTreeMap::new();
        for &(key, time) in events {
            if time < watermark {
                late += 1;
                continue;
            }
            max_seen = max_seen.max(time);
            let mut start = time.div_euclid(slide) * slide;
            while start + length > time {
                *windows.entry((start, key.to_owned())).or_default() += 1;
                changed.insert((start, key.to_owned()), ());
                start -= slide;
            }
        }
        let out = emitted.entry(k as u64).or_default();
        if !append {
            for window in changed.keys() {
                out.insert(window.clone(), windows[window]);
            }
        }
        let closed: Vec<(i64, String)> = windows
            .keys()
            .filter(|(start, _)| start + length <= watermark)
            .cloned()
            .collect();
        for window in closed {
            let count = windows.remove(&window).unwrap();
            if append {
                out.insert(window, count);
            }
        }
        if max_seen != i64::MIN {
            watermark = watermark.max(max_seen - lateness);
        }
    }
    emitted.retain(|_, windows| !windows.is_empty());
    EventReference {
        emitted,
        late,
        open_keys: windows.len(),
    }
}

fn event_batches() -> Vec<Vec<Event>> {
    vec![
        vec![("a", 1_000), ("a", 4_000), ("b", 9_000), ("c", 500)],
        vec![("a", 12_000), ("a", 2_000), ("b", 21_000), ("a", 9_999)],
        vec![("a", 8_000), ("a", 35_000), ("b", 16_500), ("c", 17_000)],
        vec![],
        vec![("b", 30_000), ("a", 60_000), ("c", 34_999)],
        vec![("a", 61_000), ("b", 36_000)],
    ]
}

/// Runs the event-time pipeline; with `spill`, its open windows spill to
/// disk (a state-memory of one byte) and a checkpoint follows every batch.
fn run_event_windows(slide: &str, output_mode: &str, spill: bool) -> (WindowCounts, String, Vec<String>) {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for (k, events) in event_batches().iter().enumerate() {
        let text: String = events
            .iter()
            .map(|(key, t)| format!("{{\"k\":\"{key}\",\"t\":{t}}}\n"))
            .collect();
        std::fs::write(input.join(format!("b{k:02}.jsonl")), text).unwrap();
    }
    let (out, late) = (dir.path().join("out"), dir.path().join("late"));
    let (checkpoints, state_memory) = match spill {
        true => (
            "checkpoint-dir = \"checkpoints\"\n\n[checkpoint]\nevery-batches = 1\n",
            "state-memory = \"1B\"",
        ),
        false => ("", ""),
    };
    let pipeline = format!(
        r#"
[pipeline]
name = "event-time"
partitions = 2
clock = "deterministic"
{checkpoints}

[plugins]
key-by = {key_by:?}

[[source]]
name = "raw"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "events"
input = "raw"
op = "map"
plugin = "key-by"
config = {{ field = "k", timestamp-field = "t" }}

[[stage]]
name = "counts"
input = "events"
op = "reduce-by-key-and-window"
reducer = "count"
time = "event"
length = "10s"
slide = "{slide}"
allowed-lateness = "5s"
output-mode = "{output_mode}"
late-records = "dead-letter"
partitions = 3
{state_memory}

[[sink]]
input = "counts"
type = "files"
format = "jsonl"
path = {out:?}

[[sink]]
input = "dead-letters"
type = "files"
path = {late:?}
"#,
        key_by = plugins::JSON_KEY_BY,
        input = input.display().to_string(),
        out = out.display().to_string(),
        late = late.display().to_string(),
    );
    let log = run_ok(dir.path(), "event.toml", &pipeline);
    let mut emitted: WindowCounts = BTreeMap::new();
    for (batch, line) in sink_lines(&out) {
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        let start = record["window"]["start"].as_i64().unwrap();
        assert_eq!(record["window"]["end"].as_i64().unwrap(), start + 10_000);
        let key = record["key"].as_str().unwrap().to_owned();
        let count: u64 = record["value"].as_str().unwrap().parse().unwrap();
        assert!(
            emitted
                .entry(batch)
                .or_default()
                .insert((start, key), count)
                .is_none()
        );
    }
    let late_lines = sink_lines(&late).into_iter().map(|(_, line)| line).collect();
    (emitted, log, late_lines)
}

#[test]
fn event_time_windows_follow_the_watermark_in_append_and_update_modes() {
    for (slide, slide_ms, spill) in [("10s", 10_000, false), ("5s", 5_000, false), ("5s", 5_000, true)] {
        for (mode, append) in [("append", true), ("update", false)] {
            let expected = event_reference(&event_batches(), 10_000, slide_ms, 5_000, append);
            let (emitted, log, late) = run_event_windows(slide, mode, spill);
            assert_eq!(
                emitted, expected.emitted,
                "slide {slide}, {mode} mode, spill {spill}"
            );
            if spill {
                // Every open window ends on disk, and checkpoints were written.
                assert!(
                    log.contains(&format!("state: {0} keys ({0} on disk)", expected.open_keys)),
                    "{log}"
                );
                assert!(log.contains(" checkpoints written"), "{log}");
            }
            assert!(expected.late > 0);
            assert_eq!(late.len(), expected.late, "{late:?}");
            assert!(
                late.iter().all(|line| line.contains("behind the watermark")),
                "{late:?}"
            );
            assert!(
                log.contains(&format!("{} late records dropped", expected.late)),
                "{log}"
            );
            // Windows the watermark passed were freed: only open ones hold state.
            assert!(
                log.contains(&format!("state: {} keys", expected.open_keys)),
                "expected {} open window keys: {log}",
                expected.open_keys
            );
        }
    }
}

#[test]
fn joins_of_two_keyed_streams_match_a_reference() {
    let dir = scratch();
    let (orders, users) = (dir.path().join("orders"), dir.path().join("users"));
    std::fs::create_dir(&orders).unwrap();
    std::fs::create_dir(&users).unwrap();
    // Batch 0 and batch 1 of each side; some keys on one side only.
    let order_batches = [
        vec![("u1", 5), ("u2", 7), ("u1", 1), ("u4", 2)],
        vec![("u3", 9), ("u5", 3)],
    ];
    let user_batches = [
        vec![("u1", "Ann"), ("u3", "Cid"), ("u6", "Eve")],
        vec![("u3", "Cy"), ("u5", "Fay")],
    ];
    for (k, batch) in order_batches.iter().enumerate() {
        let text: String = batch
            .iter()
            .map(|(user, amount)| format!("{{\"user\":\"{user}\",\"amount\":{amount}}}\n"))
            .collect();
        std::fs::write(orders.join(format!("{k}.jsonl")), text).unwrap();
    }
    for (k, batch) in user_batches.iter().enumerate() {
        let text: String = batch
            .iter()
            .map(|(user, name)| format!("{{\"user\":\"{user}\",\"name\":\"{name}\"}}\n"))
            .collect();
        std::fs::write(users.join(format!("{k}.jsonl")), text).unwrap();
    }
    let kinds = [
        "join",
        "left-outer-join",
        "right-outer-join",
        "full-outer-join",
        "cogroup",
    ];
    let mut pipeline = format!(
        r#"
[pipeline]
name = "joins"
partitions = 3
clock = "deterministic"

[plugins]
key-by = {key_by:?}

[[source]]
name = "orders-raw"
type = "files"
path = {orders:?}
max-files-per-batch = 1

[[source]]
name = "users-raw"
type = "files"
path = {users:?}
max-files-per-batch = 1

[[stage]]
name = "orders"
input = "orders-raw"
op = "map"
plugin = "key-by"
config = {{ field = "user" }}

[[stage]]
name = "users"
input = "users-raw"
op = "map"
plugin = "key-by"
config = {{ field = "user" }}
"#,
        key_by = plugins::JSON_KEY_BY,
        orders = orders.display().to_string(),
        users = users.display().to_string(),
    );
    for kind in kinds {
        pipeline.push_str(&format!(
            "[[stage]]\nname = \"{kind}\"\ninput = [\"orders\", \"users\"]\nop = \"{kind}\"\npartitions = 2\n\n\
             [[sink]]\ninput = \"{kind}\"\ntype = \"files\"\npath = {:?}\n\n",
            dir.path().join("out").join(kind).display().to_string()
        ));
    }
    run_ok(dir.path(), "joins.toml", &pipeline);

    let order_json = |(user, amount): &(&str, i32)| serde_json::json!({"user": user, "amount": amount});
    let user_json = |(user, name): &(&str, &str)| serde_json::json!({"user": user, "name": name});
    for kind in kinds {
        let mut expected: Vec<(u64, String, serde_json::Value)> = Vec::new();
        for k in 0..2 {
            let (lefts, rights) = (&order_batches[k], &user_batches[k]);
            let mut keys: Vec<&str> = lefts
                .iter()
                .map(|l| l.0)
                .chain(rights.iter().map(|r| r.0))
                .collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let l: Vec<serde_json::Value> = lefts.iter().filter(|o| o.0 == key).map(order_json).collect();
                let r: Vec<serde_json::Value> = rights.iter().filter(|u| u.0 == key).map(user_json).collect();
                if kind == "cogroup" {
                    expected.push((
                        k as u64,
                        key.to_owned(),
                        serde_json::json!({"left": l, "right": r}),
                    ));
                    continue;
                }
                let keep_left = kind == "left-outer-join" || kind == "full-outer-join";
                let keep_right = kind == "right-outer-join" || kind == "full-outer-join";
                for left in &l {
                    for right in &r {
                        expected.push((
                            k as u64,
                            key.to_owned(),
                            serde_json::json!({"left": left, "right": right}),
                        ));
                    }
                    if r.is_empty() && keep_left {
                        expected.push((
                            k as u64,
                            key.to_owned(),
                            serde_json::json!({"left": left, "right": null}),
                        ));
                    }
                }
                if l.is_empty() && keep_right {
                    for right in &r {
                        expected.push((
                            k as u64,
                            key.to_owned(),
                            serde_json::json!({"left": null, "right": right}),
                        ));
                    }
                }
            }
        }
        let mut got: Vec<(u64, String, serde_json::Value)> = sink_lines(&dir.path().join("out").join(kind))
            .into_iter()
            .map(|(batch, line)| {
                let (key, value) = line.split_once('\t').unwrap();
                (batch, key.to_owned(), serde_json::from_str(value).unwrap())
            })
            .collect();
        let order = |v: &(u64, String, serde_json::Value)| (v.0, v.1.clone(), v.2.to_string());
        got.sort_by_key(order);
        expected.sort_by_key(order);
        assert_eq!(got, expected, "{kind}");
    }
}

#[test]
fn the_deterministic_clock_makes_runs_repeat_exactly() {
    let dir = scratch();
    let run = |name: &str| {
        let out = dir.path().join(name);
        let pipeline = format!(
            r#"
[pipeline]
name = "replay"
batch-interval = "10s"
partitions = 3
clock = "deterministic"
start-time = 5000

[plugins]
split-words = {split:?}

[[source]]
name = "lines"
type = "generator"
lines = 2000
records-per-batch = 300
seed = 9

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key-and-window"
reducer = "count"
length = "30s"
slide = "10s"
inverse = true

[[sink]]
input = "counts"
type = "files"
format = "jsonl"
path = {out:?}
"#,
            split = plugins::SPLIT_WORDS,
            out = out.display().to_string(),
        );
        let log = run_ok(dir.path(), &format!("{name}.toml"), &pipeline);
        // 2000 lines at 300 per batch: 7 batches, the last one short.
        assert!(log.contains("7 batches"), "{log}");
        let mut lines = sink_lines(&out);
        lines.sort();
        lines
    };
    let (first, second) = (run("first"), run("second"));
    assert!(!first.is_empty());
    assert_eq!(first, second);
    // Batch k's window ends at start-time + (k + 1) * interval, whatever the wall clock did.
    for (batch, line) in &first {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            record["window"]["end"].as_i64().unwrap(),
            5_000 + (*batch as i64 + 1) * 10_000
        );
    }
}

#[test]
fn a_join_of_two_windowed_streams_joins_whole_windows() {
    let dir = scratch();
    let (left_dir, right_dir) = (dir.path().join("left"), dir.path().join("right"));
    std::fs::create_dir(&left_dir).unwrap();
    std::fs::create_dir(&right_dir).unwrap();
    // Batch k of each side: keys that meet only when windows span batches.
    let left: [&[(&str, i32)]; 4] = [
        &[("a", 1), ("b", 2)],
        &[("c", 3)],
        &[("a", 4)],
        &[("d", 5), ("c", 6)],
    ];
    let right: [&[(&str, i32)]; 4] = [&[("c", 10)], &[("a", 20)], &[("d", 30)], &[("a", 40), ("e", 50)]];
    for (dir, batches) in [(&left_dir, left), (&right_dir, right)] {
        for (k, batch) in batches.iter().enumerate() {
            let text: String = batch
                .iter()
                .map(|(key, v)| format!("{{\"k\":\"{key}\",\"v\":{v}}}\n"))
                .collect();
            std::fs::write(dir.join(format!("{k}.jsonl")), text).unwrap();
        }
    }
    let out = dir.path().join("out");
    let pipeline = format!(
        r#"
[pipeline]
name = "windowed-join"
partitions = 2
clock = "deterministic"

[plugins]
key-by = {key_by:?}

[[source]]
name = "left-raw"
type = "files"
path = {left:?}
max-files-per-batch = 1

[[source]]
name = "right-raw"
type = "files"
path = {right:?}
max-files-per-batch = 1

[[stage]]
name = "left"
input = "left-raw"
op = "map"
plugin = "key-by"
config = {{ field = "k", value-field = "v" }}

[[stage]]
name = "right"
input = "right-raw"
op = "map"
plugin = "key-by"
config = {{ field = "k", value-field = "v" }}

[[stage]]
name = "left-window"
input = "left"
op = "window"
length = "2s"
slide = "2s"

[[stage]]
name = "right-window"
input = "right"
op = "window"
length = "2s"
slide = "2s"

[[stage]]
name = "joined"
input = ["left-window", "right-window"]
op = "join"

[[sink]]
input = "joined"
type = "files"
path = {out:?}
"#,
        key_by = plugins::JSON_KEY_BY,
        left = left_dir.display().to_string(),
        right = right_dir.display().to_string(),
        out = out.display().to_string(),
    );
    run_ok(dir.path(), "windowed-join.toml", &pipeline);
    let mut got: Vec<(u64, String, String)> = sink_lines(&out)
        .into_iter()
        .map(|(batch, line)| {
            let (key, value) = line.split_once('\t').unwrap();
            (batch, key.to_owned(), value.to_owned())
        })
        .collect();
    got.sort();
    // Windows end at batches 1 and 3 and hold two batches of each side.
    let mut expected = Vec::new();
    for k in [1usize, 3] {
        for (lk, lv) in left[k - 1].iter().chain(left[k]) {
            for (rk, rv) in right[k - 1].iter().chain(right[k]) {
                if lk == rk {
                    expected.push((
                        k as u64,
                        (*lk).to_owned(),
                        format!("{{\"left\":\"{lv}\",\"right\":\"{rv}\"}}"),
                    ));
                }
            }
        }
    }
    expected.sort();
    assert_eq!(got, expected);
    // "c" only meets across batches 0 and 1, "a" across 0/1 and 2/3.
    assert!(expected.iter().any(|(_, key, _)| key == "c"));
}
